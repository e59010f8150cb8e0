"""Scoring a folder of generated images with a judge, against real images: what `clipkit judge score` reports.

    from clipkit.evaluation.judge import Judge
    from clipkit.evaluation.judge_score import read_label_file, score_folder
    report = score_folder(Judge.load("runs/judge"), "gen/", "gen/labels.csv", real_data="data/icons/val")
    for line in report_lines(report): print(line)

The labels file maps each generated image (a file name in the folder) to what it was
meant to show, as CSV or JSON:

    file,name,source                      # CSV: a header; `file`, then label fields of the judge, then
    000.png,folder music,00012003         #   optionally `source`: the __key__ of the real sample it
    001.png,firefox,00345001              #   was made from (inversions), for pixel nearest-source

    {"000.png": "folder music"}                                   # JSON: the judge's first label field
    {"000.png": {"name": "folder music", "source": "00012003"}}  # or fields (and source) by name

Figures (each beside the judge's own accuracy on real held-out images):
identification top-1 / top-5 per label field (labels the judge never saw, e.g. unseen
names, are counted and left out); Frechet distance in the judge's features as a
multiple of the real-vs-real floor (real images other than the sources, cut in two
halves); noise and sharpness against real images
(image_stats.noise_sharpness: 1.0 = as real; the same measures of one real half against
the other are given beside); and, when sources are given, the model-free pixel
nearest-source identification among `num_candidates` real images.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import torch

from clipkit.data.folders import read_images, skipped_note
from clipkit.evaluation.image_stats import nearest_source, noise_sharpness, resize_to
from clipkit.evaluation.judge import Judge, as_tensor, pixels_to_x
from clipkit.evaluation.judge_train import read_labelled


def read_label_file(path, fields: tuple) -> tuple[list, dict, list | None]:
    """(file names, {field: labels}, sources or None) from a CSV or JSON labels file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"labels file {str(path)!r} does not exist; write a CSV (file,<field>[,source]) "
            f"or a JSON object {{file: label}}"
        )
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not data:
            raise ValueError(f"labels file {str(path)!r} holds no {{file: label}} object")
        rows = [{"file": k, **(v if isinstance(v, dict) else {fields[0]: v})} for k, v in data.items()]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "file" not in rows[0]:
            raise ValueError(
                f"labels file {str(path)!r} needs a header row starting with `file` "
                f"(e.g. `file,{fields[0]},source`) and one row per image"
            )
    given = [f for f in fields if f in rows[0]]
    extra = sorted(set(rows[0]) - set(fields) - {"file", "source"})
    if extra or not given:
        raise ValueError(
            f"labels file {str(path)!r} has the columns {sorted(rows[0])}; expected `file`, some of "
            f"the judge's label fields {list(fields)} and optionally `source`"
        )
    missing = [r["file"] for r in rows if any(r.get(f) in (None, "") for f in given)]
    if missing:
        raise ValueError(f"labels file {str(path)!r}: {missing[0]!r} has no {given} label")
    sources = [str(r["source"]) for r in rows] if "source" in rows[0] else None
    return [r["file"] for r in rows], {f: [str(r[f]) for r in rows] for f in given}, sources


def load_images(folder, files: list, skipped: Counter | None = None) -> tuple[torch.Tensor, list[int]]:
    """The named images of `folder` that decode, as (N, 3, S, S) in [-1, 1] (one size for all), and their
    indices in `files`; a file that does not decode (or a decompression bomb) is skipped and counted in
    `skipped` (the folder policy, clipkit.data.folders)."""
    folder = Path(folder)
    absent = [f for f in files if not (folder / f).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} image(s) named in the labels file are not in {str(folder)!r}, e.g. {absent[0]!r}"
        )
    kept, images = [], []
    for i, _, image in read_images([folder / f for f in files], skipped):
        kept.append(i)
        images.append(image)
    if not images:
        raise ValueError(
            f"none of the {len(files)} images named in the labels file decodes "
            f"({skipped_note(skipped or Counter())}); check {str(folder)!r}"
        )
    return as_tensor(images), kept


def score_images(
    judge: Judge,
    images: torch.Tensor,
    labels: dict,
    real: dict,
    sources: list | None = None,
    num_candidates: int = 100,
    seed: int = 0,
) -> dict:
    """Every figure for `images` (N, 3, S, S) meant to show `labels`, against `real` (read_labelled's dict)."""
    real_x = pixels_to_x(real["pixels"])
    index = None
    if sources is not None:
        where = {k: i for i, k in enumerate(real["keys"])}
        absent = [s for s in sources if s not in where]
        if absent:
            raise ValueError(
                f"{len(absent)} source key(s) are not in the real data, e.g. {absent[0]!r}; give the "
                f"shards the images were made from as --real-data"
            )
        index = [where[s] for s in sources]
    # The distribution references leave the sources out: a copy of its own source must not look like the floor.
    rest = sorted(set(range(len(real_x))) - set(index or ()))
    pool = real_x[rest] if len(rest) >= 4 else real_x
    if len(pool) < 4:
        raise ValueError(f"{len(real_x)} real images; the real-vs-real floors need at least 4 (two halves)")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    half_a, half_b = pool[order[: len(order) // 2]], pool[order[len(order) // 2 :]]
    report = {
        "num_images": len(images),
        "image_size": int(images.shape[-1]),
        "num_real": len(real_x),
        "judge": {
            "held_out": judge.training.get("real_accuracy"),
            "line": judge.accuracy_line(),
            "on_real_data": judge.identify(real_x, {f: real["labels"][f] for f in labels}),
        },
        "identification": judge.identify(images, labels),
        "frechet": judge.frechet(images, pool, seed=seed),
    }
    reference = half_a
    if index is not None:
        report["nearest_source"] = nearest_source(images, real_x, index, num_candidates, seed)
        reference = real_x[index]
    ns = noise_sharpness(images, reference)
    floor = noise_sharpness(resize_to(half_b, images.shape[-1]), half_a)
    report["noise"] = {
        **{k: ns[k] for k in ("noise", "sharpness", "hf_ratio", "coherent_ratio", "coherence_ratio")},
        "reference": "sources" if sources is not None else "real",
        "real_vs_real": {k: floor[k] for k in ("noise", "sharpness", "hf_ratio")},
    }
    return report


def score_folder(
    judge: Judge, folder, label_file, real_data: str, real_limit: int = 2000, num_candidates: int = 100, seed: int = 0
) -> dict:
    """read_label_file + load_images + read the real shards (up to real_limit) + score_images."""
    files, labels, sources = read_label_file(label_file, judge.fields)
    skipped: Counter = Counter()
    images, kept = load_images(folder, files, skipped)
    labels = {f: [values[i] for i in kept] for f, values in labels.items()}
    sources = [sources[i] for i in kept] if sources is not None else None
    real = read_labelled(real_data, list(labels), None, real_limit)
    report = score_images(judge, images, labels, real, sources, num_candidates, seed)
    report.update({"images": str(folder), "labels": str(label_file), "real_data": real_data, "skipped": dict(skipped)})
    return report


def report_lines(report: dict) -> list[str]:
    """The report as lines a person reads; the judge's own real accuracy beside each judge figure."""
    own = report["judge"]["on_real_data"]
    beside = "; ".join(f"{f} top-1 {v['top1']:.3f}" for f, v in own.items() if v["top1"] is not None)
    beside = f"  [judge on {report['num_real']} real images: {beside or 'no known labels'}]"
    lines = [report["judge"]["line"]]
    for f, v in report["identification"].items():
        scores = "no label known to the judge" if v["top1"] is None else f"top-1 {v['top1']:.3f}, top-5 {v['top5']:.3f}"
        lines.append(
            f"identification ({f}): {scores} over {v['num']} images (chance {v['chance']:.4f}; "
            f"{v['unknown']} with labels the judge never saw)" + beside
        )
    fr = report["frechet"]
    lines.append(
        f"Frechet in judge features: {fr['frechet']:.3f} = {fr['ratio']:.2f}x the real-vs-real floor "
        f"{fr['floor']:.3f} ({fr['num']} images a side)" + beside
    )
    ns = report["noise"]
    rr = ns["real_vs_real"]
    lines.append(
        f"noise {ns['noise']:.2f}x real (real vs real {rr['noise']:.2f}), sharpness {ns['sharpness']:.2f} "
        f"(real vs real {rr['sharpness']:.2f}); naive high-frequency energy {ns['hf_ratio']:.2f}x "
        f"(reference: {ns['reference']})"
    )
    if "nearest_source" in report:
        n = report["nearest_source"]
        lines.append(
            f"pixel nearest source: top-1 {n['top1']:.3f} among {n['num_candidates']} real images "
            f"(chance {n['chance']:.3f}, {n['num']} images)"
        )
    return lines
