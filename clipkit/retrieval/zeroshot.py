"""Zero-shot classification with a CLIP model: class vectors from prompt templates.

    clf = ZeroShotClassifier(model, ["cat", "dog"], templates="openai")
    clf.predict(["a.png", "b.png"])           # (N,) class indices
    clf.predict_proba(images)                 # (N, C) softmax of 100 * image . class
    report = clf.evaluate(images, labels, confusion_png="cm.png")
    report["top1"], report["top5"], report["balanced_accuracy"], report["per_class_recall"]

Class vectors are built exactly as open_clip's `build_zero_shot_classifier`:
every template filled with the class name, each text embedding L2-normalised,
averaged over templates, renormalised. Logits are 100 * image @ classes.T.

Templates: "openai" (the 80 ImageNet templates of the CLIP paper, as open_clip
ships them), "simple" (a handful of short ones), "none" (the class name as is:
use it when class names are whole prompts), a text file with one template per
line containing "{}", or a list of format strings / callables.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from clipkit.io.figures import new_figure, save_figure

SIMPLE_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a drawing of a {}.")
DEFAULT_TEMPLATES = "simple"  # the one default of zero-shot, eval, export-benchmark and serve


class BenchmarkTemplate:
    """A template in CLIP_benchmark's syntax ("a photo of a {c}."), callable like clipkit's template callables."""

    def __init__(self, text: str):
        if "{c}" not in text:
            raise ValueError(f"template {text!r} has no '{{c}}' where the class name goes")
        self.text = text

    def __call__(self, classname: str) -> str:
        return self.text.format(c=classname)  # CLIP_benchmark's own substitution

    def __repr__(self) -> str:
        return f"BenchmarkTemplate({self.text!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, BenchmarkTemplate) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def get_templates(spec: str | os.PathLike | Sequence[str | Callable] | None = None) -> list:
    """Resolve a template spec (see module docstring) to a list of format strings or callables.

    A template names the class with "{}" (Python's format, open_clip's) or "{c}" (CLIP_benchmark's), in a
    list or a file (one a line, '#' lines skipped) alike. None: DEFAULT_TEMPLATES."""
    if spec is None:
        spec = DEFAULT_TEMPLATES
    if isinstance(spec, (str, os.PathLike)):
        name = str(spec)
        if name == "openai":
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # open_clip is slow to import

            return list(OPENAI_IMAGENET_TEMPLATES)
        if name == "simple":
            return list(SIMPLE_TEMPLATES)
        if name in ("none", "{}"):
            return ["{}"]
        path = Path(name)
        if not path.is_file():
            raise ValueError(
                f"templates={name!r}: expected 'openai', 'simple', 'none' or a text file of "
                f"templates (one a line, each containing '{{}}' or '{{c}}')"
            )
        spec = [
            line.strip()
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
    templates = [BenchmarkTemplate(t) if isinstance(t, str) and "{c}" in t else t for t in spec]
    if not templates:
        raise ValueError("templates is empty; expected at least one template")
    for i, t in enumerate(templates):
        if isinstance(t, str):
            if "{}" not in t:
                raise ValueError(f"template {i} ({t!r}) has no '{{}}' or '{{c}}' where the class name goes")
        elif not callable(t):
            raise TypeError(f"template {i} is {type(t).__name__}; expected a format string or a callable")
    return templates


def class_vectors(model, classnames: Sequence[str], templates, batch_size: int = 256):
    """(C, D) float32 torch tensor of unit class vectors (open_clip's recipe, see module docstring)."""
    templates = get_templates(templates)
    texts = [t.format(c) if isinstance(t, str) else t(c) for c in classnames for t in templates]
    emb = model.encode_texts(texts, batch_size=batch_size)  # (C*T, D), unit norm
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)  # (C, D)
    return F.normalize(emb, dim=-1)


class ZeroShotClassifier:
    """Classify images among `classnames` by cosine similarity to templated class prompts."""

    def __init__(self, model, classnames: Sequence[str], templates=None, batch_size: int = 256):
        classnames = list(classnames)
        if len(classnames) < 2:
            raise ValueError(f"need at least 2 class names; got {classnames!r}")
        if len(set(classnames)) != len(classnames):
            dup = sorted({c for c in classnames if classnames.count(c) > 1})
            raise ValueError(f"duplicate class names {dup}")
        for i, c in enumerate(classnames):
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"classnames[{i}]={c!r}; expected a non-empty string")
        self.model, self.classnames, self.batch_size = model, classnames, batch_size
        self.templates = get_templates(templates)
        self.weights = class_vectors(model, classnames, self.templates, batch_size).numpy()  # (C, D)

    def embed(self, images) -> np.ndarray:
        """(N, D) image embeddings; a float (N, D) array of embeddings passes through."""
        if isinstance(images, np.ndarray) and images.ndim == 2 and np.issubdtype(images.dtype, np.floating):
            if images.shape[1] != self.weights.shape[1]:
                raise ValueError(f"embeddings have dim {images.shape[1]}; the model embeds in {self.weights.shape[1]}")
            return images.astype(np.float32, copy=False)
        if hasattr(images, "detach") and images.ndim == 2:
            return self.embed(images.detach().cpu().numpy())
        return self.model.encode_images(images, batch_size=self.batch_size).numpy()

    def logits(self, images) -> np.ndarray:
        return 100.0 * self.embed(images) @ self.weights.T  # (N, C)

    def predict_proba(self, images) -> np.ndarray:
        z = self.logits(images)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, images) -> np.ndarray:
        return self.logits(images).argmax(axis=1)

    def _label_indices(self, labels) -> np.ndarray:
        out = []
        for i, label in enumerate(labels):
            if isinstance(label, str):
                if label not in self.classnames:
                    raise ValueError(
                        f"sample {i}'s label {label!r} is not one of the {len(self.classnames)} classes "
                        f"{list(self.classnames)[:10]}; leave such samples out or add the class"
                    )
                out.append(self.classnames.index(label))
            else:
                if not 0 <= int(label) < len(self.classnames):
                    raise ValueError(f"labels[{i}]={label!r}; expected a class index in [0, {len(self.classnames)})")
                out.append(int(label))
        return np.asarray(out, dtype=np.int64)

    def evaluate(self, images, labels, confusion_png: str | os.PathLike | None = None) -> dict:
        """Top-1, top-5, balanced accuracy, per-class recall and the confusion matrix (rows = truth)."""
        y = self._label_indices(labels)
        z = self.logits(images)
        if len(z) != len(y):
            raise ValueError(f"{len(z)} images but {len(y)} labels")
        report = metrics_from_logits(z, y, self.classnames)
        if confusion_png is not None:
            save_confusion_png(
                np.asarray(report["confusion"]),
                self.classnames,
                confusion_png,
                title=f"zero-shot top-1 {report['top1']:.3f}",
            )
        return report


def metrics_from_logits(logits: np.ndarray, y: np.ndarray, classnames: Sequence[str]) -> dict:
    c = len(classnames)
    order = np.argsort(-logits, axis=1)
    pred = order[:, 0]
    top1 = float(np.mean(pred == y)) if len(y) else float("nan")
    top5 = float(np.mean([t in row[:5] for t, row in zip(y, order)])) if len(y) else float("nan")
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    support = confusion.sum(axis=1)
    recall = {name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classnames)}
    present = [r for r in recall.values() if r is not None]
    return {
        "n": int(len(y)),
        "top1": top1,
        "top5": top5,
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class_recall": recall,
        "support": {n: int(s) for n, s in zip(classnames, support)},
        "confusion": confusion.tolist(),
        "classnames": list(classnames),
    }


def save_confusion_png(confusion: np.ndarray, classnames: Sequence[str], path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    c = len(classnames)
    norm = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * c + 2)
    fig = new_figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), labels=classnames, rotation=45, ha="right")
    ax.set_yticks(range(c), labels=classnames)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if confusion[i, j]:
                    ax.text(
                        j,
                        i,
                        str(confusion[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def format_report(report: dict, title: str = "") -> str:
    """A printable text report of `evaluate`'s result."""
    lines = [title] if title else []
    lines.append(
        f"n={report['n']}  top-1={report['top1']:.4f}  top-5={report['top5']:.4f}  "
        f"balanced={report['balanced_accuracy']:.4f}"
    )
    width = max(len(n) for n in report["classnames"])
    for name in report["classnames"]:
        r = report["per_class_recall"][name]
        lines.append(f"  {name:<{width}}  recall={'   n/a' if r is None else f'{r:.4f}'}  n={report['support'][name]}")
    return "\n".join(lines)
