"""Embedding arithmetic: a small, safe expression language over CLIP embeddings, and nearest words.

    v = evaluate_expression(model, 'img:"hat.png" - img:"bare.png" + 0.5 * text:"a hat"')   # (D,) float32
    v = evaluate_expression(model, 'img:"42" + text:"a hat"', images={"42": index.vectors([42])[0]})
    nearest_words(model, v, k=5)          # [("hat", 0.41), ("cap", 0.33), ...] over clipkit/data/vocabulary.txt

Grammar (recursive descent; nothing is ever passed to eval):

    expr    := term (("+" | "-") term)*
    term    := unary ("*" unary)*
    unary   := "-" unary | primary
    primary := NUMBER | img:"path" | text:"words" | "(" expr ")"
             | normalize "(" expr ")" | mean "(" expr ("," expr)* ")"

Strings take double or single quotes, with backslash escapes. `img:` and
`text:` references become unit-norm embeddings of the model (an `img:` name
found in `images` stands for what it maps to: a stored (D,) embedding, used
without encoding, or an image to encode; any other `img:` name is a file); numbers scale
vectors; adding a number to a vector, or multiplying two vectors, is an
error. Errors are ExpressionError (a ValueError) naming the 0-based column
and showing a caret under it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipkit.io.errors import positive_int

VOCABULARY_PATH = Path(__file__).resolve().parents[1] / "data" / "vocabulary.txt"  # clipkit/data/
FUNCTIONS = ("normalize", "mean")
MAX_LENGTH, MAX_DEPTH = 10_000, 64


class ExpressionError(ValueError):
    """A syntax or type error in an arithmetic expression, with its position."""

    def __init__(self, message: str, expression: str, position: int):
        self.expression, self.position = expression, position
        shown = expression if len(expression) <= 120 else expression[max(0, position - 60) : position + 60]
        offset = position if len(expression) <= 120 else min(position, 60)
        super().__init__(f"{message} at position {position}\n  {shown}\n  {' ' * offset}^")


# ----------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # NUMBER, REF, IDENT, OP, END
    value: Any  # by kind: float (NUMBER), (img|text, str) (REF), str (IDENT, OP), None (END)
    pos: int


_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _read_string(text: str, pos: int) -> tuple[str, int]:
    """The quoted string starting at text[pos] (a quote); returns (value, position after it)."""
    quote, i, out = text[pos], pos + 1, []
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == quote:
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise ExpressionError(f"unterminated string (missing closing {quote})", text, pos)


def tokenize(text: str) -> list[Token]:
    if not isinstance(text, str):
        raise TypeError(f"expression must be a str; got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}", text, MAX_LENGTH)
    tokens, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "+-*(),":
            tokens.append(Token("OP", ch, i))
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < len(text) and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            assert m is not None, "a digit starts a number"
            tokens.append(Token("NUMBER", float(m.group()), i))
            i = m.end()
        elif ch.isalpha() or ch == "_":
            m = _IDENT.match(text, i)
            assert m is not None, "a letter starts a name"
            word, end = m.group(), m.end()
            if word in ("img", "text") and end < len(text) and text[end] == ":":
                j = end + 1
                while j < len(text) and text[j] == " ":
                    j += 1
                if j >= len(text) or text[j] not in "\"'":
                    raise ExpressionError(f'{word}: must be followed by a quoted string, e.g. {word}:"..."', text, j)
                value, i = _read_string(text, j)
                if not value.strip():
                    raise ExpressionError(f'empty {word}:"" reference', text, j)
                tokens.append(Token("REF", (word, value), m.start()))
            else:
                tokens.append(Token("IDENT", word, i))
                i = end
        else:
            raise ExpressionError(f"unexpected character {ch!r}", text, i)
    tokens.append(Token("END", None, len(text)))
    return tokens


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Node:
    op: str  # num, ref, neg, +, -, *, normalize, mean
    args: tuple
    pos: int


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.i, self.depth = text, tokenize(text), 0, 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, op: str) -> Token:
        tok = self.peek()
        if tok.kind != "OP" or tok.value != op:
            raise ExpressionError(f"expected {op!r} but found {_describe(tok)}", self.text, tok.pos)
        return self.take()

    def parse(self) -> Node:
        if self.peek().kind == "END":
            raise ExpressionError("empty expression", self.text, 0)
        node = self.expr()
        tok = self.peek()
        if tok.kind != "END":
            raise ExpressionError(f"unexpected {_describe(tok)} (missing an operator?)", self.text, tok.pos)
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"expression nested deeper than {MAX_DEPTH}", self.text, self.peek().pos)
        node = self.term()
        while self.peek().kind == "OP" and self.peek().value in "+-":
            tok = self.take()
            node = Node(tok.value, (node, self.term()), tok.pos)
        self.depth -= 1
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "OP" and self.peek().value == "*":
            tok = self.take()
            node = Node("*", (node, self.unary()), tok.pos)
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "OP" and tok.value == "-":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"expression nested deeper than {MAX_DEPTH}", self.text, tok.pos)
            node = Node("neg", (self.unary(),), tok.pos)
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "NUMBER":
            return Node("num", (tok.value,), tok.pos)
        if tok.kind == "REF":
            return Node("ref", tok.value, tok.pos)
        if tok.kind == "OP" and tok.value == "(":
            node = self.expr()
            self.expect(")")
            return node
        if tok.kind == "IDENT":
            if tok.value not in FUNCTIONS:
                raise ExpressionError(
                    f'unknown name {tok.value!r}; expected a function {FUNCTIONS}, img:"path", text:"..." or a number',
                    self.text,
                    tok.pos,
                )
            self.expect("(")
            args = [self.expr()]
            while self.peek().kind == "OP" and self.peek().value == ",":
                self.take()
                args.append(self.expr())
            self.expect(")")
            if tok.value == "normalize" and len(args) != 1:
                raise ExpressionError(f"normalize takes 1 argument; got {len(args)}", self.text, tok.pos)
            return Node(tok.value, tuple(args), tok.pos)
        raise ExpressionError(f"expected a value but found {_describe(tok)}", self.text, tok.pos)


def _describe(tok: Token) -> str:
    if tok.kind == "END":
        return "the end of the expression"
    if tok.kind == "REF":
        return f"{tok.value[0]}:{tok.value[1]!r}"
    if tok.kind == "NUMBER":
        return f"number {tok.value:g}"
    return repr(tok.value)


def parse_expression(text: str) -> Node:
    """Parse into a tree of Nodes; raises ExpressionError (with position) on bad syntax."""
    return _Parser(text).parse()


def references(node: Node) -> list[tuple[str, str, int]]:
    """All (kind, value, position) img/text references in the tree, in order."""
    if node.op == "ref":
        return [(node.args[0], node.args[1], node.pos)]
    if node.op == "num":
        return []
    return [r for child in node.args for r in references(child)]


# ----------------------------------------------------------------------------- evaluation


def evaluate_expression(
    model, expression: str, base_dir: str | os.PathLike | None = None, *, images: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Evaluate to a (D,) float32 vector; img paths are relative to `base_dir` (default: cwd).

    `images` maps img: names to what they stand for instead of a file: a (D,) vector (an indexed item's
    stored embedding: `{"42": index.vectors([42])[0]}`), used unit-norm without encoding anything, or an
    image (PIL, uint8 array) that the model encodes.
    """
    tree = parse_expression(expression)
    refs = references(tree)
    given = dict(images or {})
    emb: dict = {}
    to_encode: dict[str, Any] = {}
    for kind, value, pos in refs:
        if kind != "img" or ("img", value) in emb or value in to_encode:
            continue
        if value in given:
            item = given[value]
            if (isinstance(item, np.ndarray) or hasattr(item, "detach")) and len(item.shape) == 1:
                emb[("img", value)] = _stored_vector(item, value, pos, model.embed_dim, expression)
            else:
                to_encode[value] = item
            continue
        path = Path(value) if base_dir is None or Path(value).is_absolute() else Path(base_dir) / value
        if not path.is_file():
            raise FileNotFoundError(f"img:{value!r} at position {pos}: no such image file ({str(path)!r})")
        to_encode[value] = str(path)
    texts = sorted({v for k, v, _ in refs if k == "text"})
    if to_encode:
        vecs = model.encode_images(list(to_encode.values())).numpy()
        emb.update({("img", key): v for key, v in zip(to_encode, vecs)})
    if texts:
        emb.update({("text", t): v for t, v in zip(texts, model.encode_texts(texts).numpy())})
    result = _eval(tree, emb, expression)
    if not isinstance(result, np.ndarray):
        raise ExpressionError("the expression is a number; it must produce a vector (use img: or text:)", expression, 0)
    return result.astype(np.float32)


def _stored_vector(item, name: str, pos: int, dim: int, expression: str) -> np.ndarray:
    """A given (D,) embedding for img:NAME: the model's dim, finite, not zero; returned unit-norm."""
    v = np.asarray(item.detach().cpu() if hasattr(item, "detach") else item, dtype=np.float32)
    if v.shape != (dim,):
        raise ExpressionError(
            f"img:{name!r} stands for a vector of shape {v.shape}; the model embeds in dim {dim}", expression, pos
        )
    norm = float(np.linalg.norm(v)) if np.isfinite(v).all() else float("nan")
    if not norm > 1e-12:
        raise ExpressionError(f"img:{name!r} stands for a vector that is zero or holds NaN / inf", expression, pos)
    return v / norm  # unit-norm, like every embedding a reference becomes


def _eval(node: Node, emb: dict, text: str):
    op = node.op
    if op == "num":
        return float(node.args[0])
    if op == "ref":
        return emb[node.args]
    if op == "neg":
        return -_eval(node.args[0], emb, text)
    if op in ("normalize", "mean"):
        values = [_eval(a, emb, text) for a in node.args]
        if not all(isinstance(v, np.ndarray) for v in values):
            raise ExpressionError(f"{op}() takes vectors, not numbers", text, node.pos)
        if op == "mean":
            return np.mean(values, axis=0)
        norm = float(np.linalg.norm(values[0]))
        if norm < 1e-12:
            raise ExpressionError("normalize() of a zero vector", text, node.pos)
        return values[0] / norm
    a, b = (_eval(x, emb, text) for x in node.args)
    a_vec, b_vec = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if op == "*":
        if a_vec and b_vec:
            raise ExpressionError("cannot multiply two vectors; scale a vector by a number", text, node.pos)
        return a * b
    if a_vec != b_vec:
        word = "add" if op == "+" else "subtract"
        raise ExpressionError(f"cannot {word} a number and a vector", text, node.pos)
    return a + b if op == "+" else a - b


# ----------------------------------------------------------------------------- nearest words


def load_vocabulary(vocabulary: str | os.PathLike | Sequence[str] | None = None) -> list[str]:
    """The shipped vocabulary (None), a text file (one word or phrase a line), or a list, deduplicated."""
    if vocabulary is None or isinstance(vocabulary, (str, os.PathLike)):
        path = Path(vocabulary) if vocabulary is not None else VOCABULARY_PATH
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    else:
        words = [str(w).strip() for w in vocabulary]
    words = list(dict.fromkeys(w for w in words if w and not w.startswith("#")))
    if not words:
        raise ValueError(f"vocabulary {vocabulary!r} holds no words")
    return words


_CACHE: dict = {}


def vocabulary_embeddings(model, vocabulary=None, template: str = "{}") -> tuple[list[str], np.ndarray]:
    """(words, (V, D) unit embeddings of template.format(word)); cached per model weights."""
    words = load_vocabulary(vocabulary)
    if "{}" not in template:
        raise ValueError(f"template={template!r} must contain '{{}}' where the word goes")
    key = (model.identity, tuple(words), template)
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = model.encode_texts([template.format(w) for w in words]).numpy()
    return words, _CACHE[key]


def nearest_words(model, vector, k: int = 5, vocabulary=None, template: str = "{}") -> list[tuple[str, float]]:
    """The k vocabulary words whose text embeddings have the highest cosine with `vector`."""
    k = positive_int(k, "k")
    v = np.asarray(vector.detach().cpu() if hasattr(vector, "detach") else vector, dtype=np.float32).reshape(-1)
    words, emb = vocabulary_embeddings(model, vocabulary, template)
    if v.shape[0] != emb.shape[1]:
        raise ValueError(f"vector has dim {v.shape[0]}; the model embeds in dim {emb.shape[1]}")
    if not np.isfinite(v).all():
        bad = np.flatnonzero(~np.isfinite(v))
        raise ValueError(
            f"vector holds {len(bad)} NaN/inf value(s) (first at index {int(bad[0])}); "
            f"nearest words are undefined for a non-finite vector"
        )
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        raise ValueError("vector is zero; nearest words are undefined")
    scores = emb @ (v / norm)
    top = np.argsort(-scores)[:k]
    return [(words[i], float(scores[i])) for i in top]
