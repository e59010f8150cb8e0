"""Zero-shot classification, image-text retrieval and linear probe, as CLIP_benchmark defines them.

    from clipkit.evaluation import evaluate, write_rows
    row = evaluate(model, "benchmarks/shapes_color", task="zeroshot")
    row["metrics"]        # {"acc1": 0.97, "acc5": 1.0, "mean_per_class_recall": 0.97}
    write_rows([row], "results.jsonl")          # appended: runs concatenate into one table

Metric definitions (those of LAION-AI/CLIP_benchmark, so numbers agree with `clip_benchmark eval`):

- zeroshot (`zeroshot_classification`): class vectors by open_clip's recipe
  (clipkit.retrieval.zeroshot.class_vectors), logits 100 * image . class; `acc1`, `acc5`
  (NaN with fewer than 5 classes, as CLIP_benchmark reports it) and
  `mean_per_class_recall` (balanced accuracy over the classes present).
- retrieval (`zeroshot_retrieval`): scores text x image; each text's positive is
  its own image, each image's positives are all its captions.
  `image_retrieval_recall@k`: fraction of texts whose image is among the k best
  images; `text_retrieval_recall@k`: fraction of images with at least one of
  their captions among the k best texts (ties ordered as torch.topk orders them).
- linear probe (`linear_probe`): scikit-learn's logistic regression on frozen,
  L2-normalised image features; the inverse regularisation C is searched on a
  validation split carved from the training data (coarse-to-fine over
  1e-6..1e6, CLIP's range), then refit on train + validation. Metrics carry
  CLIP_benchmark's `lp_` prefix. Training data: the dataset's own train split
  when the layout has one, else a seeded stratified half of the data (the
  other half is the test set; the row says which).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from clipkit.evaluation.datasets import EvalDataset, open_dataset
from clipkit.io import output_file
from clipkit.retrieval.zeroshot import class_vectors, metrics_from_logits

if TYPE_CHECKING:
    from clipkit.model import ClipModel

# CLI task name -> CLIP_benchmark's task name (what the JSON rows say).
TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear-probe": "linear_probe"}
RECALL_K = (1, 5, 10)
C_GRID = np.logspace(-6, 6, 97)  # 8 steps a decade over CLIP's range for the probe's regulariser


def task_name(task: str) -> str:
    """'zeroshot' | 'retrieval' | 'linear-probe' (or CLIP_benchmark's long names) -> the short name."""
    if task in TASKS:
        return task
    for short, long in TASKS.items():
        if task == long:
            return short
    raise ValueError(f"task={task!r} is not one of {list(TASKS)} (or {list(TASKS.values())})")


@dataclass
class Features:
    """Image embeddings of a dataset with what each sample carried."""

    images: torch.Tensor  # (N, D) unit norm
    labels: np.ndarray | None  # (N,) int64 class indices (need="labels")
    captions: list[list[str] | None]  # N lists of captions (each non-empty when need="captions")


def embed_dataset(
    model,
    dataset: EvalDataset,
    need: str,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
) -> Features:
    """Embed the images of the first `max_samples` samples that have what `need` ('labels' | 'captions') asks."""
    from tqdm.auto import tqdm

    if need not in ("labels", "captions"):
        raise ValueError(f"need={need!r}; expected 'labels' or 'captions'")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples={max_samples}; expected a positive int or None")
    chunks: list[torch.Tensor] = []
    pending: list = []
    labels: list[int | str | None] = []
    captions: list[list[str] | None] = []
    bar = tqdm(total=max_samples, disable=not progress, unit="images", desc=f"embed {dataset.name}")
    for sample in dataset.samples():
        if need == "labels" and sample.label is None:
            dataset.skipped["no_label"] += 1
            continue
        if need == "captions" and not sample.captions:
            dataset.skipped["no_text"] += 1
            continue
        pending.append(sample.image)
        labels.append(sample.label)
        captions.append(sample.captions)
        if len(pending) == batch_size:
            chunks.append(model.encode_images(pending, batch_size=batch_size))
            bar.update(len(pending))
            pending = []
        if max_samples is not None and len(labels) >= max_samples:
            break
    if pending:
        chunks.append(model.encode_images(pending, batch_size=batch_size))
        bar.update(len(pending))
    bar.close()
    if not labels:
        raise ValueError(
            f"dataset {dataset.name!r} ({dataset.path}) has no sample with {need[:-1]}s "
            f"(skipped: {dict(dataset.skipped) or 'none'})"
        )
    images = torch.cat(chunks)
    if need == "captions":
        return Features(images, None, captions)
    y = _label_indices(dataset, labels)
    keep = y >= 0
    if not keep.any():
        names = dataset.classnames or []
        raise ValueError(
            f"dataset {dataset.name!r} ({dataset.path}): none of its {len(labels)} labels is one of its "
            f"{len(names)} class names (label {labels[0]!r}; classes {names[:3]} ...): an evaluation "
            f"with no samples measures nothing; check the label field and the class names file"
        )
    if not keep.all():
        dataset.skipped["bad_label"] += int((~keep).sum())
        images, y = images[torch.from_numpy(keep)], y[keep]
        captions = [c for c, k in zip(captions, keep) if k]
    return Features(images, y, captions)


def _label_indices(dataset: EvalDataset, labels: list) -> np.ndarray:
    """Class indices; -1 for a label outside the classes. String labels (json fields) name classes."""
    if isinstance(labels[0], str):
        if dataset.classnames is None:
            dataset.classnames = sorted(set(labels))
        index = {c: i for i, c in enumerate(dataset.classnames)}
        return np.array([index.get(v, -1) for v in labels], dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if dataset.classnames is not None:
        y[(y < 0) | (y >= len(dataset.classnames))] = -1
    return y


# ----------------------------------------------------------------------------- metrics


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """acc1, acc5 (NaN below 5 classes) and mean_per_class_recall, as CLIP_benchmark reports them."""
    report = metrics_from_logits(np.asarray(logits), np.asarray(labels), [str(i) for i in range(num_classes)])
    return {
        "acc1": report["top1"],
        "acc5": report["top5"] if num_classes >= 5 else float("nan"),
        "mean_per_class_recall": report["balanced_accuracy"],
    }


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = RECALL_K,
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k both ways (module docstring); k is capped at the number of candidates."""
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    n_img, n_txt = len(image_features), len(text_features)
    if len(text_to_image) != n_txt:
        raise ValueError(f"{n_txt} texts but {len(text_to_image)} text->image indices")
    hits_img: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, n_txt, chunk):  # texts as queries over images
        scores = text_features[start : start + chunk] @ image_features.T  # (t, N)
        top = scores.topk(min(max(ks), n_img), dim=1).indices
        correct = top == text_to_image[start : start + chunk, None]
        for k in ks:
            hits_img[k].append(correct[:, :k].any(1))
    hits_txt: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, n_img, chunk):  # images as queries over texts
        scores = image_features[start : start + chunk] @ text_features.T  # (i, T)
        top = scores.topk(min(max(ks), n_txt), dim=1).indices
        correct = text_to_image[top] == torch.arange(start, start + len(scores))[:, None]
        for k in ks:
            hits_txt[k].append(correct[:, :k].any(1))
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(torch.cat(hits_img[k]).double().mean())
        out[f"text_retrieval_recall@{k}"] = float(torch.cat(hits_txt[k]).double().mean())
    return out


# ----------------------------------------------------------------------------- tasks


def zeroshot(
    model: ClipModel,
    dataset: EvalDataset,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
) -> tuple[dict, int]:
    """(metrics, samples evaluated) of zero-shot classification."""
    features = embed_dataset(model, dataset, "labels", batch_size, max_samples, progress)
    classnames, templates = _classes_and_templates(dataset)
    weights = class_vectors(model, classnames, templates, batch_size=batch_size)  # (C, D)
    logits = 100.0 * features.images @ weights.T  # (N, C)
    labels = features.labels
    assert labels is not None  # need="labels"
    return classification_metrics(logits.numpy(), labels, len(classnames)), len(labels)


def _classes_and_templates(dataset: EvalDataset):
    if not dataset.classnames:
        raise ValueError(
            f"dataset {dataset.name!r} has no class names: add classnames.txt (one a line) or pass classnames="
        )
    if len(set(dataset.classnames)) != len(dataset.classnames):
        dup = sorted({c for c in dataset.classnames if dataset.classnames.count(c) > 1})
        raise ValueError(f"dataset {dataset.name!r} has duplicate class names {dup}")
    if not dataset.templates:
        raise ValueError(
            f"dataset {dataset.name!r} has no templates: add zeroshot_classification_templates.txt "
            f"or pass templates= ('openai', 'simple', a file)"
        )
    return dataset.classnames, dataset.templates


def retrieval(
    model: ClipModel,
    dataset: EvalDataset,
    batch_size: int = 256,
    max_samples: int | None = None,
    ks: Sequence[int] = RECALL_K,
    progress: bool = False,
) -> tuple[dict, int]:
    """(metrics, images evaluated) of image-text retrieval."""
    features = embed_dataset(model, dataset, "captions", batch_size, max_samples, progress)
    captions = cast("list[list[str]]", features.captions)  # need="captions": every sample has some
    texts = [t for caps in captions for t in caps]
    text_to_image = [i for i, caps in enumerate(captions) for _ in caps]
    text_features = model.encode_texts(texts, batch_size=batch_size)
    return retrieval_metrics(features.images, text_features, text_to_image, ks), len(features.images)


def linear_probe(
    model: ClipModel,
    dataset: EvalDataset,
    train: EvalDataset | None = None,
    val_proportion: float = 0.2,
    seed: int = 0,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
) -> tuple[dict, int, dict]:
    """(metrics, test samples, info) of a logistic-regression probe (module docstring)."""
    if not 0 < val_proportion < 1:
        raise ValueError(f"val_proportion={val_proportion}; expected a fraction in (0, 1)")
    test = embed_dataset(model, dataset, "labels", batch_size, max_samples, progress)
    x_test, y_test = test.images.numpy(), test.labels
    assert y_test is not None  # need="labels"
    train = train if train is not None else dataset.train_split()
    if train is not None:
        if train.classnames is None:
            train.classnames = dataset.classnames
        fit = embed_dataset(model, train, "labels", batch_size, max_samples, progress)
        x_fit, y_fit, source = fit.images.numpy(), fit.labels, f"{train.name}:{train.split}"
        assert y_fit is not None  # need="labels"
    else:
        fit_idx, test_idx = _split(y_test, 0.5, seed)
        x_fit, y_fit = x_test[fit_idx], y_test[fit_idx]
        x_test, y_test = x_test[test_idx], y_test[test_idx]
        source = (
            f"seeded stratified half of {dataset.name}:{dataset.split} (seed {seed}); the other half is the test set"
        )
    tr, va = _split(y_fit, val_proportion, seed)
    num_classes = len(dataset.classnames) if dataset.classnames else int(max(y_fit.max(), y_test.max())) + 1
    best_c, val_acc = _search_c(x_fit[tr], y_fit[tr], x_fit[va], y_fit[va], num_classes)
    probe = _fit(x_fit, y_fit, best_c)
    metrics = classification_metrics(_logits(probe, x_test, num_classes), y_test, num_classes)
    metrics = {f"lp_{k}": v for k, v in metrics.items()}
    metrics.update({"C": float(best_c), "val_acc1": val_acc})
    info = {
        "train": source,
        "train_samples": int(len(tr)),
        "val_samples": int(len(va)),
        "seed": seed,
        "normalized": True,
    }
    return metrics, int(len(y_test)), info


def _split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held) with `fraction` held out, stratified when every class has 2+ samples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if len(y) < 4:
        raise ValueError(f"{len(y)} labelled samples are too few for a linear probe (train / validation / test)")
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)


def _fit(x, y, c):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the extreme ends of the C grid rarely converge
        return LogisticRegression(C=float(c), max_iter=1000).fit(x, y)


def _logits(probe, x, num_classes: int) -> np.ndarray:
    """Decision values in the full class space (classes absent from training get -inf)."""
    scores = probe.decision_function(x)
    if scores.ndim == 1:  # binary: sklearn returns one column
        scores = np.stack([-scores, scores], axis=1)
    out = np.full((len(x), num_classes), -np.inf)
    out[:, probe.classes_] = scores
    return out


def _search_c(x_tr, y_tr, x_va, y_va, num_classes: int) -> tuple[float, float]:
    """Coarse-to-fine search of C on validation accuracy (ties go to the stronger regularisation)."""
    if len(np.unique(y_tr)) < 2:
        raise ValueError("the probe's training split holds a single class; add data or lower val_proportion")
    cache: dict[int, float] = {}

    def score(i: int) -> float:
        if i not in cache:
            probe = _fit(x_tr, y_tr, C_GRID[i])
            cache[i] = float(np.mean(_logits(probe, x_va, num_classes).argmax(1) == y_va))
        return cache[i]

    def best(indices) -> int:
        return max(sorted(set(indices)), key=lambda i: (score(i), -i))

    peak = best(range(0, len(C_GRID), 16))  # every 2 decades
    for span in (8, 4, 2, 1):
        peak = best([max(peak - span, 0), peak, min(peak + span, len(C_GRID) - 1)])
    return float(C_GRID[peak]), score(peak)


# ----------------------------------------------------------------------------- rows


def evaluate(
    model: ClipModel,
    dataset: EvalDataset | str | os.PathLike,
    task: str = "auto",
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    recall_k: Sequence[int] = RECALL_K,
    train: EvalDataset | str | os.PathLike | None = None,
    val_proportion: float = 0.2,
    seed: int = 0,
    model_name: str | None = None,
    pretrained: str | None = None,
    progress: bool = False,
) -> dict:
    """One result row for (model, dataset, task), shaped like CLIP_benchmark's output JSON plus provenance."""
    ds = dataset if isinstance(dataset, EvalDataset) else open_dataset(dataset)
    short = ds.default_task if task == "auto" else task_name(task)
    info: dict = {}
    if short == "zeroshot":
        metrics, n = zeroshot(model, ds, batch_size, max_samples, progress)
    elif short == "retrieval":
        metrics, n = retrieval(model, ds, batch_size, max_samples, recall_k, progress)
    else:
        if train is not None and not isinstance(train, EvalDataset):
            train = open_dataset(train, label_field=ds.label_field, classnames=ds.classnames)
        metrics, n, info = linear_probe(model, ds, train, val_proportion, seed, batch_size, max_samples, progress)
    return {
        "dataset": ds.name,
        "model": model_name or model.config.name,
        "pretrained": pretrained if pretrained is not None else (model.config.pretrained or ""),
        "task": TASKS[short],
        "metrics": metrics,
        "language": "en",
        "model_identity": model.identity,
        "dataset_path": ds.path,
        "layout": ds.layout,
        "split": ds.split,
        "num_samples": n,
        "skipped": dict(ds.skipped),
        **({"probe": info} if info else {}),
    }


def json_safe(value):
    """NaN / inf -> None (strict JSON), recursively; CLIP_benchmark writes a bare NaN instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


ROWS_FORMAT = "clipkit-eval-rows"


def is_rows_file(path: str | os.PathLike) -> str | None:
    """ROWS_FORMAT when `path` holds JSON lines of evaluation rows (each with dataset, task and metrics), else None."""
    try:
        rows = read_rows(path)
    except (ValueError, OSError, RecursionError):
        return None
    ok = all(isinstance(r, dict) and {"dataset", "task", "metrics"} <= set(r) for r in rows)
    return ROWS_FORMAT if ok else None


def write_rows(
    rows: list[dict], path: str | os.PathLike, append: bool = True, *, overwrite: bool = False, inputs: Iterable = ()
) -> Path:
    """Write rows as JSON lines (atomically; appended to what `path` holds unless append=False).

    `path` must be new or a rows file of ours (clipkit.io.check_output_path; a JSON-lines file of
    evaluation rows counts as ours); anything else is refused unless `overwrite` (then replaced)."""
    with output_file(path, ROWS_FORMAT, inputs, overwrite, mode="w", append=append, recognise=is_rows_file) as f:
        for row in rows:
            f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
    return Path(path)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of one or more concatenated JSON-lines files (blank lines ignored)."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object: {e}") from None
    return rows
