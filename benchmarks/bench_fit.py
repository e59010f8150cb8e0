"""`clipkit fit` on a real image set: each stage's steps and seconds, and the judged figures against the targets.

    python benchmarks/bench_fit.py --from runs/fit64                    # a finished `clipkit fit --judge ...`
    python benchmarks/bench_fit.py --from runs/fit-old runs/fit64 --labels before after

Each column is one finished fit folder: its summary.json (steps, training seconds and what stopped each
stage; the CLIP's retrieval on the validation split) and report.json (the report's figures on its held-out
images). The targets are those of a fit on the icon set (`clipkit icons`) with a 45-minute budget:
inversion identified by an independent judge (trained on real images only, its own accuracy on the same
real images printed beside) and by pixel nearest-source, Frechet distance in the judge's features as a
multiple of the real-vs-real floor, noise against real images (speckle raises it), and text -> image
identification on held-out captions. Writes benchmarks/results/fit-icons.json / .md (--results-name).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import protocol

STAGES = ("clip", "clip-import", "prior", "decoder", "upsampler", "index")
# (measure, report.json key, target, True when higher is better)
TARGETS = (
    ("inversion: judge identification top-1", "inversion_judge_top1", 0.6, True),
    ("inversion: pixel nearest-source top-1", "pixel_nearest_source_top1", 0.6, True),
    ("inversion: Frechet / real floor", "inversion_frechet_ratio", 3.0, False),
    ("inversion: noise / real", "inversion_noise", 1.2, False),
    ("text -> image (held-out captions): judge top-1", "text_judge_top1", 0.4, True),
)
# Shown beside the targets: what the judge and the chance level are.
CONTEXT = (
    ("the judge on the same real images: top-1", "real_judge_top1"),
    ("judge chance (1 / its classes)", "real_judge_chance"),
    ("pixel chance (1 / candidates)", "pixel_chance"),
    ("inversion: sharpness / real", "inversion_sharpness"),
    ("text -> image: noise / real", "text_noise"),
)


def read_fit(folder: Path) -> tuple[dict, dict]:
    """(summary.json, report.json metrics) of a finished fit folder; exits naming what is missing."""
    files = [folder / "summary.json", folder / "report.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        sys.exit(f"{missing} missing: give a folder a finished `clipkit fit --out` wrote")
    return json.loads(files[0].read_text()), json.loads(files[1].read_text())["metrics"]


def columns(summary: dict, metrics: dict) -> tuple[dict, list[list]]:
    """(stage cells, target rows) of one fit: rows are [measure, value, target, ok | MISSED | '']."""
    stages = {**summary["stages"], "index": summary.get("index", {})}
    cells: dict[str, str] = {}
    for name in STAGES:
        st = stages.get(name)
        if not st:
            continue
        if "steps" in st and st.get("train_seconds"):
            stopped = re.search(r"\(stopped by ([^)]*)\)", st.get("summary", ""))
            stop = stopped.group(1) if stopped else "steps"
            cells[name] = f"{st['steps']:,} steps, {st['train_seconds']:.0f} s ({stop})"
        else:
            cells[name] = f"{st.get('seconds', 0):.0f} s"
    # No total: after the CLIP, stages train side by side (clipkit.train.fit.LANES), so seconds do not add up.
    rows = []
    ev = stages.get("clip", {}).get("eval", {})
    for key in ("val/t2i_r1", "val/t2i_r5"):
        if key in ev:
            rows.append([f"CLIP {key[4:]} (validation split)", f"{ev[key]:.3f}", "", ""])
    for label, key, target, higher in TARGETS:
        wanted = f"{'>=' if higher else '<='} {target:g}"
        if key not in metrics:
            rows.append([label, "not measured", wanted, ""])
            continue
        ok = metrics[key] >= target if higher else metrics[key] <= target
        rows.append([label, f"{metrics[key]:.3f}", wanted, "ok" if ok else "MISSED"])
    for label, key in CONTEXT:
        if key in metrics:
            rows.append([label, f"{metrics[key]:.4g}", "", ""])
    return cells, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="folders", nargs="+", type=Path, required=True, help="finished fit folders")
    p.add_argument("--labels", nargs="+", help="one column title per folder [the folder names]")
    p.add_argument("--results-name", default="fit-icons")
    args = p.parse_args()
    labels = args.labels or [f.name for f in args.folders]
    if len(labels) != len(args.folders):
        p.error(f"{len(labels)} --labels for {len(args.folders)} fit folders; give one per folder")
    fits = {lab: columns(*read_fit(folder)) for lab, folder in zip(labels, args.folders)}
    stage_rows, figure_rows = protocol.run_columns(fits)
    table = (
        "**Each stage** (summary.json: steps, training seconds, what stopped it)\n\n"
        + protocol.markdown_table(["stage", *labels], stage_rows)
        + "\n**The report's figures against the targets** (report.json)\n\n"
        + protocol.markdown_table(["measure", "target", *labels], figure_rows)
    )
    print(table)
    results = {
        "fits": {
            lab: {"folder": str(f), "stages": fits[lab][0], "rows": fits[lab][1]}
            for lab, f in zip(labels, args.folders)
        }
    }
    print("written:", protocol.write_results(args.results_name, results, table))


if __name__ == "__main__":
    main()
