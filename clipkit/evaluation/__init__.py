"""Evaluate any CLIP on any dataset, with CLIP_benchmark's tasks, metrics and dataset layout.

    from clipkit.evaluation import evaluate, evaluate_datasets, export_labelled_folder, open_dataset, write_rows
    row = evaluate(model, "bench/pets", task="zeroshot")          # one JSON-ready row (see tasks.py)
    write_rows([row], "results.jsonl")
    evaluate_datasets(model, ["bench/pets", "data/val"])   # {"pets/acc1": ..., "val/image_retrieval_recall@5": ...}
    export_labelled_folder("photos/", "bench/photos")             # any ROOT/<class>/* -> CLIP_benchmark's layout

Layouts: datasets.py; tasks and metric definitions: tasks.py; the writer: export.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from clipkit.evaluation.datasets import EvalDataset, open_dataset
from clipkit.evaluation.export import export_clip_benchmark, export_labelled_folder
from clipkit.evaluation.tasks import (
    TASKS,
    classification_metrics,
    evaluate,
    linear_probe,
    read_rows,
    retrieval,
    retrieval_metrics,
    write_rows,
    zeroshot,
)

if TYPE_CHECKING:
    from clipkit.model import ClipModel

__all__ = [
    "EvalDataset",
    "open_dataset",
    "export_clip_benchmark",
    "export_labelled_folder",
    "TASKS",
    "classification_metrics",
    "evaluate",
    "evaluate_datasets",
    "linear_probe",
    "read_rows",
    "retrieval",
    "retrieval_metrics",
    "write_rows",
    "zeroshot",
]


def evaluate_datasets(
    model: ClipModel, paths: list[str], batch_size: int = 256, max_samples: int | None = None
) -> dict[str, float]:
    """Each dataset's default task (zero-shot for labelled data, retrieval for caption data) as flat metrics.

    Returns {"<dataset name>/acc1": ..., "<name>/acc5": ..., "<name>/mean_per_class_recall": ...} for
    classification datasets and {"<name>/image_retrieval_recall@5": ..., ...} for retrieval ones; the
    name is the dataset folder's name (a metric that is undefined, such as acc5 with fewer than 5
    classes, is left out). `model` is a ClipModel (the unwrapped one inside a training loop); every
    process that calls this reads all of each dataset, in order.
    """
    if isinstance(paths, str):
        raise TypeError(f"paths must be a list of dataset paths; got the string {paths!r} (wrap it in a list)")
    out: dict[str, float] = {}
    seen: dict[str, str] = {}
    for path in paths:
        dataset = open_dataset(path)
        if dataset.name in seen:
            raise ValueError(
                f"datasets {seen[dataset.name]!r} and {str(path)!r} share the name {dataset.name!r}; "
                f"their metrics would collide: rename one folder"
            )
        seen[dataset.name] = str(path)
        if dataset.default_task == "zeroshot":
            metrics, _ = zeroshot(model, dataset, batch_size, max_samples)
        else:
            metrics, _ = retrieval(model, dataset, batch_size, max_samples)
        for key, value in metrics.items():
            if math.isfinite(value):
                out[f"{dataset.name}/{key}"] = float(value)
    return out
