"""`make demo`'s stage table and its judged figures against the presets' targets, before / after a change.

    python benchmarks/bench_demo.py --run runs/demo-bench              # run `clipkit demo` here, timed
    python benchmarks/bench_demo.py --from runs/demo-old runs/demo-new --labels before after   # finished demos

Each column is one demo: seconds per stage (its summary.json, the stages as `clipkit demo` ran them),
the unCLIP stage's training and evaluation split, and the figures the issue holds the demo to: the
unCLIP targets of benchmarks/bench_unclip.py (judged by the independent shapes judge) and the CLIP's
zero-shot shape accuracy on the holdout split (shape x colour pairs it never saw). `--run` times the demo
inside a CPU window (benchmarks/protocol.py) and marks it when another process took CPU meanwhile.
Writes benchmarks/results/demo.json / .md (--results-name to change).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_unclip import target_rows

import protocol

STAGES = ("data", "clip", "zeroshot", "retrieval", "hat_vector", "unclip", "spiral")
HOLDOUT_SHAPE_TARGET = 0.95
BUDGET_SECONDS = 15 * 60


def read_demo(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        sys.exit(f"{str(path)!r} is missing: give a folder a finished `clipkit demo --out` wrote")
    summary = json.loads(path.read_text())
    if summary.get("quick"):
        sys.exit(f"{str(folder)!r} is a --quick demo; its figures are not the presets' (run the full demo)")
    return summary


def columns(summary: dict) -> tuple[dict, list[list]]:
    """(stage seconds, target rows) of one demo summary."""
    st = summary["stages"]
    seconds = {name: st[name]["seconds"] for name in STAGES if name in st}
    for part, value in st["unclip"].get("times", {}).items():
        seconds[f"unclip: {part}"] = value
    for model in ("decoder", "prior", "upsampler"):
        run = st["unclip"].get(model, {})
        if "train_seconds" in run:
            seconds[f"unclip: {model} training"] = f"{run['train_seconds']:.0f} s, {run.get('steps', '?')} steps"
    # The same CLIP recipe's speed: how fast the machine itself ran that day (a noisy host shows here).
    seconds["CLIP steps / s (machine speed)"] = round(st["clip"]["steps"] / st["clip"]["train_seconds"], 2)
    seconds["total"] = summary["seconds"]
    rows = target_rows(st["unclip"]["metrics"])
    holdout = next(r["shape"] for r in st["zeroshot"]["table"] if r["split"] == "holdout")
    ok = holdout >= HOLDOUT_SHAPE_TARGET
    rows.append(["CLIP zero-shot holdout shape", f"{holdout:.3f}", f">= {HOLDOUT_SHAPE_TARGET:.2f}", _mark(ok)])
    total = summary["seconds"]
    rows.append(["demo wall time (s)", f"{total:.0f}", f"<= {BUDGET_SECONDS}", _mark(total <= BUDGET_SECONDS)])
    return seconds, rows


def _order(row: str) -> tuple:
    """Stages in the demo's order, each stage's parts after it, the totals last."""
    stage = row.split(":")[0]
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), row != stage, row)


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", metavar="OUT", help="run `clipkit demo --out OUT` (new or a demo's folder) and time it")
    p.add_argument("--from", dest="folders", nargs="+", type=Path, default=[], help="finished demo folders")
    p.add_argument("--labels", nargs="+", help="one column title per folder [the folder names]")
    p.add_argument("--results-name", default="demo")
    args = p.parse_args()
    folders, window = list(args.folders), None
    if args.run:
        with protocol.CpuWindow() as window:
            subprocess.run([sys.executable, "-m", "clipkit", "demo", "--out", args.run], check=True)
        folders.append(Path(args.run))
    if not folders:
        p.error("give --run OUT or --from FOLDER [FOLDER ...]")
    labels = args.labels or [f.name for f in folders]
    if len(labels) != len(folders):
        p.error(f"{len(labels)} --labels for {len(folders)} demo folders; give one per folder")
    demos = {label: columns(read_demo(folder)) for label, folder in zip(labels, folders)}
    stage_rows, figure_rows = protocol.run_columns(demos, stage_order=_order)
    note = ""
    if window is not None:
        note = (
            f"\nThe last column ran inside a CPU window: {window.wall:.0f} s wall, other processes took "
            f"{window.foreign_cores or 0:.2f} cores on average"
            + (" (contended: read it with care)" if window.contended else "")
            + ".\n"
        )
    table = (
        "**Seconds per stage** (each demo's summary.json)\n\n"
        + protocol.markdown_table(["stage", *labels], stage_rows)
        + "\n**Judged figures against the presets' targets**\n\n"
        + protocol.markdown_table(["measure", "target", *labels], figure_rows)
        + note
    )
    print(table)
    results = {
        "demos": {
            lab: {"folder": str(f), "seconds": demos[lab][0], "targets": demos[lab][1]}
            for lab, f in zip(labels, folders)
        },
        "run_window": None if window is None else {"wall": window.wall, "foreign_cores": window.foreign_cores},
    }
    print("written:", protocol.write_results(args.results_name, results, table))


if __name__ == "__main__":
    main()
