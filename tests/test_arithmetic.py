"""Embedding arithmetic: the parser (incl. hypothesis), evaluation, nearest words, the hat vector."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipkit.retrieval.arithmetic import (
    ExpressionError,
    evaluate_expression,
    load_vocabulary,
    nearest_words,
    parse_expression,
    references,
)
from clipkit.shapes.evaluate import hat_vector_experiment


class FakeModel:
    """Deterministic unit vectors per text / image path: lets evaluation be checked by hand."""

    embed_dim, identity = 16, "fake:0"

    def _vec(self, s: str) -> np.ndarray:
        v = np.random.default_rng(int(hashlib.md5(s.encode()).hexdigest()[:8], 16)).standard_normal(16)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_texts(self, texts, batch_size=256):
        import torch

        return torch.tensor(np.stack([self._vec("t" + t) for t in texts]))

    def encode_images(self, images, batch_size=256):
        import torch

        return torch.tensor(np.stack([self._vec("i" + str(i).rsplit("/", 1)[-1]) for i in images]))


@pytest.mark.parametrize(
    "expr,ops",
    [
        ('img:"a.png" - img:"b.png" + 0.5*text:"hat"', "+"),
        ('normalize(mean(text:\'a\', text:"b\\"c"))', "normalize"),
        ('-(text:"a") * 2e-1', "*"),
        ('mean(text:"a")', "mean"),
    ],
)
def test_parses_valid_expressions(expr, ops):
    assert parse_expression(expr).op == ops


@pytest.mark.parametrize(
    "expr,pos,msg",
    [
        ("1 +", 3, "expected a value"),
        ("foo(1)", 0, "unknown name 'foo'"),
        ("((1)", 4, r"expected '\)'"),
        ("img:x", 4, "quoted string"),
        ('text:"abc', 5, "unterminated"),
        ("1 2", 2, "missing an operator"),
        ("", 0, "empty"),
        ("a $ b", 2, r"unexpected character '\$'"),
        ("3 # 4", 2, "unexpected character '#'"),
        ("normalize(text:'a', text:'b')", 0, "1 argument"),
    ],
)
def test_syntax_errors_name_the_position(expr, pos, msg):
    with pytest.raises(ExpressionError, match=msg) as info:
        parse_expression(expr)
    assert info.value.position == pos and f"at position {pos}" in str(info.value)


_ALPHABET = st.sampled_from(
    list("imgtext:\"' ()+-*,.0123456789eanormlizu_$\\") + ["img:", "text:", "mean(", "normalize(", '"a"']
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_parser_never_crashes(text):
    try:
        tree = parse_expression(text)
    except ExpressionError as e:
        assert 0 <= e.position <= len(text) and "position" in str(e)
    else:
        references(tree)


def _expressions():
    leaf = st.one_of(st.sampled_from(["a", "b", "c"]).map(lambda w: (f'text:"{w}"', ("t", w))))

    def extend(children):
        num = st.floats(0.1, 3, allow_nan=False).map(lambda x: round(x, 2))
        return st.one_of(
            st.tuples(children, children, st.sampled_from("+-")).map(
                lambda t: (f"({t[0][0]} {t[2]} {t[1][0]})", (t[2], t[0][1], t[1][1]))
            ),
            st.tuples(num, children).map(lambda t: (f"{t[0]} * {t[1][0]}", ("*", t[0], t[1][1]))),
            st.lists(children, min_size=1, max_size=3).map(
                lambda cs: (f"mean({', '.join(c[0] for c in cs)})", ("mean", [c[1] for c in cs]))
            ),
        )

    return st.recursive(leaf, extend, max_leaves=8)


def _reference(tree, model):
    op = tree[0]
    if op == "t":
        return model._vec("t" + tree[1])
    if op == "*":
        return tree[1] * _reference(tree[2], model)
    if op == "mean":
        return np.mean([_reference(c, model) for c in tree[1]], axis=0)
    a, b = _reference(tree[1], model), _reference(tree[2], model)
    return a + b if op == "+" else a - b


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions())
def test_evaluation_matches_a_reference(expr_tree):
    model = FakeModel()
    expr, tree = expr_tree
    np.testing.assert_allclose(evaluate_expression(model, expr), _reference(tree, model), atol=1e-4)


def test_type_errors_and_missing_images(tmp_path):
    model = FakeModel()
    for expr, msg in [
        ('text:"a" * text:"b"', "multiply two vectors"),
        ('1 + text:"a"', "add a number"),
        ("2 * 3", "is a number"),
        ('normalize(text:"a" - text:"a")', "zero vector"),
    ]:
        with pytest.raises(ExpressionError, match=msg):
            evaluate_expression(model, expr)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        evaluate_expression(model, 'img:"nope.png"')
    (tmp_path / "x.png").write_bytes(b"")
    v = evaluate_expression(model, 'normalize(img:"x.png")', base_dir=tmp_path)
    assert v.dtype == np.float32 and np.linalg.norm(v) == pytest.approx(1, abs=1e-5)


def test_img_names_can_stand_for_stored_vectors_and_images(tmp_path):
    """`images` maps an img: name to a stored (D,) vector (used unit-norm, nothing encoded) or to an image to encode;
    other names stay files."""
    model = FakeModel()
    stored = 3.0 * model._vec("istored")  # stored vectors are used unit-norm
    (tmp_path / "b.png").write_bytes(b"")
    v = evaluate_expression(
        model,
        'img:"42" - img:"upload" + img:"b.png"',
        base_dir=tmp_path,
        images={"42": stored, "upload": "anything-to-encode"},
    )
    np.testing.assert_allclose(
        v, model._vec("istored") - model._vec("ianything-to-encode") + model._vec("ib.png"), atol=1e-6
    )
    for bad, msg in [
        (np.zeros(16), "zero or holds NaN"),
        (np.full(16, np.inf), "zero or holds NaN"),
        (np.ones(8), "shape \\(8,\\)"),
    ]:
        with pytest.raises(ExpressionError, match=msg):
            evaluate_expression(model, 'img:"42"', images={"42": bad})


def test_vocabulary_and_nearest_words(tmp_path):
    from clipkit.shapes.world import COLORS, SHAPES

    words = load_vocabulary()
    assert len(words) >= 500 and {"hat", "cap", "helmet", *SHAPES, *COLORS} <= set(words)
    model = FakeModel()
    got = nearest_words(model, model._vec("thelmet") + 0.1 * model._vec("tcap"), k=3)
    assert got[0][0] == "helmet" and len(got) == 3 and got[0][1] >= got[1][1]
    f = tmp_path / "v.txt"
    f.write_text("dog\ncat\n\ndog\n")
    assert [w for w, _ in nearest_words(model, model._vec("tcat"), k=5, vocabulary=f)] == ["cat", "dog"]
    with pytest.raises(ValueError, match="dim 3"):
        nearest_words(model, np.ones(3), 1)


def test_hat_vector_experiment_on_pair_shards(shapes_dir, tiny_model):
    result = hat_vector_experiment(tiny_model, shapes_dir / "hat_pairs")
    assert result["pairs"] == 20 and len(result["ranks"]) == 20
    assert 1 <= result["mean_rank"] <= result["vocabulary_size"] and 0 <= result["top1_rate"] <= 1
    assert result["hat_vector"].shape == (64,) and result["hat_vector"].dtype == np.float32
    assert -1 <= result["mean_cosine"] <= 1


def test_cli_arith(tmp_path, capsys):
    from clipkit.cli import main

    assert (
        main(
            [
                "arith",
                'text:"a red circle" - text:"a circle"',
                "--model",
                "shapes-tiny",
                "--words",
                "3",
                "--save",
                str(tmp_path / "v.npy"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "nearest words" in out and np.load(tmp_path / "v.npy").shape == (64,)
    assert main(["arith", "1 +", "--model", "shapes-tiny"]) == 2
    assert "position 3" in capsys.readouterr().err
