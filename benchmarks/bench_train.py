"""Training throughput: clipkit.train vs open_clip_train, side by side, same work, interleaved.

Same architecture (a clipkit preset's open_clip model config, registered for
open_clip_train through open_clip.add_model_config, or an open_clip architecture
such as ViT-B-32), same shards, batch size, precision, number of processes,
DataLoader workers and steps. The two trainers alternate (clipkit, open_clip_train;
open_clip_train, clipkit; ...) for --rounds rounds through benchmarks/protocol.py,
each run timed inside a window that notes the CPU other processes took; the table
gives each trainer's median samples/s with its range, and the ratio of the two runs
of each round with its range. Warm-up is excluded: both loops log every
`--log-every` steps, and we average the windows after the first one (ours:
metrics.jsonl samples_per_s; theirs: the "Batch (t)" window averages of
open_clip_train's log).

    python benchmarks/bench_train.py --data 'runs/data/shapes-train/{00000..00003}.tar'
    python benchmarks/bench_train.py ... --precision amp_bf16 --rounds 5 --strict
    python benchmarks/bench_train.py ... --procs 2            # 2 gloo processes each
    python benchmarks/bench_train.py ... --only ours --procs 1 2   # our 1 vs 2 process scaling

Prints the table and writes it to benchmarks/results/train-<precision>.json / .md
(--results-name to change).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = {"ours": "clipkit", "open_clip": "open_clip_train"}
_RUN_IDS = itertools.count()  # every run gets its own output folder (no resume of a previous round)


def _launcher(procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]


def _env(procs: int, threads: int | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // procs))
    return env


def _windows_after_warmup(values: list[float], what: str) -> list[float]:
    if len(values) < 2:
        raise RuntimeError(f"{what}: only {len(values)} log window(s); raise --steps")
    return values[1:]


def open_clip_model_cfg(model: str) -> dict:
    """The open_clip model config of a clipkit preset or an open_clip architecture (clipkit's own resolver)."""
    from clipkit.model import model_config  # here: the parent process loads torch only for this lookup

    return model_config(model).model_cfg


def run_ours(args, procs: int, work: Path) -> dict:
    out = work / f"ours-{procs}-{next(_RUN_IDS)}"
    cmd = [
        *_launcher(procs),
        str(REPO / "training" / "train_clip.py"),
        "--model",
        args.model,
        "--train-data",
        args.data,
        "--out-dir",
        str(out),
        "--batch-size",
        str(args.batch),
        "--max-steps",
        str(args.steps),
        "--log-every",
        str(args.log_every),
        "--mixed-precision",
        "bf16" if args.precision == "amp_bf16" else "no",
        "--num-workers",
        str(args.workers),
        "--lr",
        "1e-3",
        "--warmup-steps",
        "10",
        "--no-progress",
        "--shuffle-buffer",
        "1000",
        *(["--resampled"] if args.resampled else []),
    ]
    started = time.time()
    proc = subprocess.run(cmd, env=_env(procs, args.threads), capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"clipkit run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = _windows_after_warmup([r["samples_per_s"] for r in rows if "samples_per_s" in r], "clipkit")
    usage = json.loads((out / "summary.json").read_text()).get("utilisation", {})
    return {
        "samples_per_s": sum(rates) / len(rates),
        "windows": len(rates),
        "wall_s": round(time.time() - started, 1),
        "gflop_per_sample": usage.get("gflop_per_sample"),
        "peak_gflops": usage.get("peak_gflops"),
    }


def run_open_clip(args, procs: int, work: Path) -> dict:
    run_id = next(_RUN_IDS)
    cfg_dir = work / "open_clip_configs"
    cfg_dir.mkdir(exist_ok=True)
    name = f"clipkit-{args.model}"
    (cfg_dir / f"{name}.json").write_text(json.dumps(open_clip_model_cfg(args.model)))
    from clipkit.data.shards import count_samples  # here: as above

    total = count_samples(args.data) or 0
    # One epoch = `steps` steps: from the data once through, or drawn with replacement (--resampled).
    samples = args.steps * args.batch * procs if args.resampled else min(total, args.steps * args.batch * procs)
    logs = work / f"openclip-{procs}-{run_id}"
    # Two compatibility shims, no change to the work done: open_clip_train imports pandas for
    # its CSV datasets only (the venv has none; the webdataset path never uses it), and its
    # group_by_keys_nothrow predates webdataset 1.0's end-of-shard marker (a dict without
    # "fname"), so the markers are filtered out of its tar expander.
    code = (
        "import sys, types, open_clip; sys.modules.setdefault('pandas', types.ModuleType('pandas')); "
        "import open_clip_train.data as d; _exp = d.tar_file_expander; "
        "d.tar_file_expander = lambda *a, **k: (s for s in _exp(*a, **k) if 'fname' in s); "
        "open_clip.add_model_config(sys.argv[1]); "
        "from open_clip_train.main import main; main(sys.argv[2:])"
    )
    cmd = [*_launcher(procs), "-c", code] if procs == 1 else [*_launcher(procs), str(work / "oc_entry.py")]
    if procs > 1:
        (work / "oc_entry.py").write_text(code.replace("; ", "\n"))
    cmd += [
        str(cfg_dir),
        "--train-data",
        args.data,
        "--train-num-samples",
        str(samples),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        str(args.batch),
        "--precision",
        args.precision,
        "--workers",
        str(args.workers),
        "--model",
        name,
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--warmup",
        "10",
        "--logs",
        str(logs),
        "--name",
        "bench",
        "--save-frequency",
        "0",
        "--log-every-n-steps",
        str(args.log_every),
        "--report-to",
        "",
        "--seed",
        "0",
        "--wd",
        "0.1",
        *(["--dataset-resampled"] if args.resampled else []),
    ]
    started = time.time()
    proc = subprocess.run(cmd, env=_env(procs, args.threads), capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    text = (logs / "bench" / "out.log").read_text()
    batch_times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+),", text)]
    # its first row is after 1 step (i % n == 0 at i = 0): skip it and the warm-up window after it
    times = _windows_after_warmup(batch_times[1:], "open_clip_train")
    rates = [args.batch * procs / t for t in times]
    return {"samples_per_s": sum(rates) / len(rates), "windows": len(rates), "wall_s": round(time.time() - started, 1)}


def compare(args, procs: int, work: Path, log=print) -> protocol.Interleaved:
    """The trainers asked for (--only), interleaved over --rounds rounds at `procs` processes each."""
    runners = {"ours": run_ours, "open_clip": run_open_clip}
    sides = list(runners) if args.only == "both" else [args.only]
    contenders = {CONTENDERS[s]: (lambda f=runners[s]: f(args, procs, work)) for s in sides}
    return protocol.interleave(contenders, rounds=args.rounds, strict=args.strict, log=log)


def peak_percent(gflop_per_sample, peak_gflops, rate, procs: int) -> str:
    """% of the machine's matmul peak in the run's precision (same architecture and batch: the FLOPs per
    sample counted in our run hold for theirs too)."""
    if not (gflop_per_sample and peak_gflops and rate):
        return "-"
    return f"{100 * gflop_per_sample * rate / (peak_gflops * procs):.1f}%"


def report(args, results: dict[int, protocol.Interleaved]) -> tuple[dict, str]:
    headers = ["processes", "trainer", "samples/s: median (range)", "spread", "clean rounds", "% of matmul peak"]
    rows, data = [], {}
    for procs, runs in results.items():
        summary = runs.summary("samples_per_s")
        ours = [m for n, _, m, _ in runs.runs if n == "clipkit"]
        g = next((m.get("gflop_per_sample") for m in ours if m.get("gflop_per_sample")), None)
        peak = next((m.get("peak_gflops") for m in ours if m.get("peak_gflops")), None)
        for row in protocol.contender_rows(runs, "samples_per_s"):
            rows.append([procs, *row, peak_percent(g, peak, summary[row[0]]["median"], procs)])
        entry = {
            "summary": summary,
            "contended_windows": runs.contended_windows(),
            "runs": [{"trainer": n, "round": r + 1, **m, "foreign_cores": w.foreign_cores} for n, r, m, w in runs.runs],
            "gflop_per_sample": g,
            "peak_gflops": peak,
        }
        if len(summary) == 2:
            ratio = runs.ratio("samples_per_s", "clipkit", "open_clip_train")
            entry["ratio_clipkit_over_open_clip_train"] = ratio
            rows.append(
                [
                    procs,
                    "**ratio clipkit / open_clip_train** (per round)",
                    protocol.median_range(ratio, "x"),
                    "",
                    protocol.clean_rounds(ratio, args.rounds),
                    "",
                ]
            )
        data[str(procs)] = entry
    ours = {p: r.summary("samples_per_s").get("clipkit") for p, r in results.items()}
    base_procs = min(ours)
    if len(ours) > 1 and all(ours.values()):
        for procs in sorted(ours)[1:]:
            rows.append(
                [
                    procs,
                    f"clipkit {procs} vs {base_procs} process(es)",
                    f"{ours[procs]['median'] / ours[base_procs]['median']:.2f}x (ratio of medians)",
                    "",
                    "",
                    "",
                ]
            )
    caption = (
        f"**Training throughput, clipkit vs open_clip_train** — model `{args.model}`, batch {args.batch} per "
        f"process, {args.precision}, {args.workers} DataLoader worker(s) per process, {args.steps} steps a run "
        f"(first {args.log_every}-step window excluded as warm-up), "
        f"data {'drawn with replacement' if args.resampled else 'read in order'}; "
        f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS {args.threads or 'cores / processes'}. "
        f"The trainers alternate over {args.rounds} round(s); samples/s is the median over clean rounds with "
        f"its range, spread = (max - min) / median, a round is clean when other processes took under "
        f"0.25 of a core during it. The ratio pairs the two runs of each round. % of matmul peak: this "
        f"machine's matmul FLOP/s in the run's precision with one process's threads (clipkit.perf.matmul_peak), "
        f"x processes.\n\n"
    )
    return data, caption + protocol.markdown_table(headers, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "runs/data/shapes-train/{00000..00003}.tar"), help="train shards")
    p.add_argument("--model", default="shapes-small", help="clipkit preset or open_clip architecture [shapes-small]")
    p.add_argument("--batch", type=int, default=128, help="per-process batch [128]")
    p.add_argument("--precision", choices=("fp32", "amp_bf16"), default="fp32", help="[fp32]")
    p.add_argument("--steps", type=int, default=60, help="steps per run [60]")
    p.add_argument("--log-every", type=int, default=15, help="window length in steps [15]")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process [1]")
    p.add_argument("--threads", type=int, help="intra-op threads per process, both trainers [cores / procs]")
    p.add_argument("--procs", type=int, nargs="+", default=[1], help="process counts to run [1]")
    p.add_argument("--only", choices=("ours", "open_clip", "both"), default="both")
    p.add_argument(
        "--resampled", action="store_true", help="both trainers draw shards with replacement (little data, many steps)"
    )
    p.add_argument("--timeout", type=float, help="seconds one training run may take before it is stopped [none]")
    p.add_argument("--results-name", help="benchmarks/results/NAME.json/.md [train-fp32 or train-bf16]")
    protocol.add_arguments(p)
    args = p.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for procs in args.procs:
            results[procs] = compare(args, procs, Path(tmp))
    data, table = report(args, results)
    print("\n" + table)
    name = args.results_name or ("train-bf16" if args.precision == "amp_bf16" else "train-fp32")
    path = protocol.write_results(name, {"args": vars(args), "processes": data}, table)
    print(f"written: {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
