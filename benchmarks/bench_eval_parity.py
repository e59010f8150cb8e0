"""Parity of `clipkit eval` with LAION-AI's `clip_benchmark` on the same saved model and the same data.

    python benchmarks/bench_eval_parity.py --model runs/finetune/pretrain/model \
        --clip-benchmark /work/.venvs/clipbench/bin/clip_benchmark [--num 500] [--out runs/parity]

What it does:
1. writes shapes-world datasets in CLIP_benchmark's webdataset layout
   (clipkit.shapes.benchmark: `shapes_shape`, `shapes_color`
   for zero-shot classification, `shapes_captions` for retrieval);
2. evaluates the model with `clipkit eval` (this checkout's .venv) and with
   `clip_benchmark eval --model local-dir:MODEL --pretrained '' --dataset
   wds/NAME --dataset_root DIR` (its own venv: clip_benchmark pins its own
   packages), once in fp32 (`--no_amp`, what clipkit computes) and once with
   its default autocast (bf16 on CPU);
3. prints every metric side by side with the difference in points, writes the table to
   benchmarks/results/eval-parity.json / .md, and exits 1 if an fp32 difference exceeds
   --tolerance (0.5 points).

It compares numbers, not times (both sides are deterministic on the same data), so it
runs once: no interleaved rounds.

Without --model it trains a shapes-tiny CLIP for --steps steps first (an
untrained model makes degenerate, trivially equal numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
METRICS = {
    "zeroshot_classification": ("acc1", "acc5", "mean_per_class_recall"),
    "zeroshot_retrieval": (
        "image_retrieval_recall@1",
        "text_retrieval_recall@1",
        "image_retrieval_recall@5",
        "text_retrieval_recall@5",
    ),
}


def quick_model(work: Path, steps: int) -> str:
    from clipkit.shapes.world import write_split
    from clipkit.train.clip import ClipTrainConfig, train_clip

    write_split(work / "train", "train", num=4000, seed=0, shard_size=4000)
    train_clip(
        ClipTrainConfig(
            model="shapes-tiny",
            train_data=str(work / "train" / "00000.tar"),
            out_dir=str(work / "run"),
            max_steps=steps,
            batch_size=128,
            lr=2e-3,
            warmup_steps=20,
            num_workers=0,
            progress=False,
        )
    )
    return str(work / "run" / "model")


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"command failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a saved clipkit model folder (default: train a quick one)")
    p.add_argument("--clip-benchmark", default="/work/.venvs/clipbench/bin/clip_benchmark")
    p.add_argument("--num", type=int, default=500, help="images per dataset")
    p.add_argument("--steps", type=int, default=150, help="training steps of the quick model")
    p.add_argument("--out", default=None, help="folder for data and results (default: a temporary one)")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed fp32 difference, in points")
    args = p.parse_args()
    if not Path(args.clip_benchmark).is_file():
        sys.exit(
            f"clip_benchmark not found at {args.clip_benchmark}; install it in its own venv: "
            f"python3 -m venv /work/.venvs/clipbench && /work/.venvs/clipbench/bin/pip install clip_benchmark"
        )
    work = Path(args.out or tempfile.mkdtemp(prefix="clipkit-parity-"))
    model = str(Path(args.model or quick_model(work / "model", args.steps)).resolve())

    from clipkit.shapes.benchmark import export_shapes_benchmark

    bench = export_shapes_benchmark(work / "bench", "val", args.num, seed=1, attributes=("shape", "color"))
    ours_file = work / "clipkit.jsonl"
    ours_file.unlink(missing_ok=True)
    clipkit_bin = str(Path(sys.executable).with_name("clipkit"))
    env_note = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    for name, path in bench.items():
        task = "retrieval" if name.endswith("captions") else "zeroshot"
        run(
            [
                clipkit_bin,
                "eval",
                "--model",
                model,
                "--dataset",
                path,
                "--task",
                task,
                "--device",
                "cpu",
                "--recall-k",
                "1",
                "5",
                "--batch-size",
                "64",
                "--output",
                str(ours_file),
            ]
        )
    ours = {r["dataset"]: r["metrics"] for r in map(json.loads, ours_file.read_text().splitlines())}

    theirs: dict[str, dict[str, dict]] = {"fp32": {}, "amp": {}}
    for mode in theirs:
        for name, path in bench.items():
            task = "zeroshot_retrieval" if name.endswith("captions") else "zeroshot_classification"
            out = work / f"clip_benchmark_{name}_{mode}.json"
            run(
                [
                    args.clip_benchmark,
                    "eval",
                    "--dataset",
                    f"wds/{name}",
                    "--dataset_root",
                    path,
                    "--model",
                    f"local-dir:{model}",
                    "--pretrained",
                    "",
                    "--task",
                    task,
                    "--batch_size",
                    "64",
                    "--num_workers",
                    "0",
                    "--recall_k",
                    "1",
                    "5",
                    "--output",
                    str(out),
                    "--quiet",
                    *(["--no_amp"] if mode == "fp32" else []),
                ]
            )
            theirs[mode][name] = json.loads(out.read_text())["metrics"]

    worst, rows = 0.0, []
    for name in bench:
        task = "zeroshot_retrieval" if name.endswith("captions") else "zeroshot_classification"
        for metric in METRICS[task]:
            a = ours[name][metric]
            b, c = theirs["fp32"][name][metric], theirs["amp"][name][metric]
            if a is None:  # acc5 with < 5 classes: null here, NaN there
                continue
            d32, damp = 100 * abs(a - b), 100 * abs(a - c)
            worst = max(worst, d32)
            rows.append([name, metric, f"{a:.4f}", f"{b:.4f}", f"{d32:.2f}", f"{c:.4f}", f"{damp:.2f}"])
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    table = (
        f"**`clipkit eval` vs LAION's clip_benchmark** — same model ({Path(model).name}), same data ({args.num} "
        f"shapes-world images a dataset, clip_benchmark's webdataset layout), CPU ({env_note}). Metrics as "
        f"fractions; diff = |clipkit - clip_benchmark| in points (x100); clip_benchmark in fp32 (--no_amp, what "
        f"clipkit computes) and with its default autocast (bf16 on CPU). Largest fp32 difference "
        f"{worst:.3f} points (tolerance {args.tolerance}): {verdict}.\n\n"
    )
    table += protocol.markdown_table(
        ["dataset", "metric", "clipkit", "clip_benchmark fp32", "diff (points)", "clip_benchmark amp", "diff (points)"],
        rows,
    )
    print("\n" + table)
    from clipkit.io import write_json

    results = {
        "model": model,
        "clipkit": ours,
        "clip_benchmark": theirs,
        "max_fp32_diff_points": worst,
        "tolerance": args.tolerance,
        "verdict": verdict,
    }
    write_json(work / "parity.json", results)
    path = protocol.write_results("eval-parity", results, table)
    print(f"written: {path} and {path.with_suffix('.md')}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
