"""Training throughput: clipkit.train vs open_clip_train, side by side, same work.

Same architecture (the clipkit preset's open_clip model config, registered for
open_clip_train through open_clip.add_model_config), same shards, batch size,
precision, number of processes, DataLoader workers and steps, on this CPU.
Warm-up is excluded: both loops log every `--log-every` steps, and we average
the windows after the first one (ours: metrics.jsonl samples_per_s; theirs:
the "Batch (t)" window averages of open_clip_train's log).

    python benchmarks/bench_train.py --data 'runs/data/shapes-train/{00000..00003}.tar'
    python benchmarks/bench_train.py ... --procs 2            # 2 gloo processes each
    python benchmarks/bench_train.py ... --only ours --procs 1 2   # our 1 vs 2 process scaling

Prints samples/s for each and the ratio; `--json FILE` keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def run_ours(args, procs: int, work: Path) -> dict:
    out = work / f"ours-{procs}"
    cmd = [*_launcher(procs), str(REPO / "training" / "train_clip.py"),
           "--model", args.model, "--train-data", args.data, "--out-dir", str(out),
           "--batch-size", str(args.batch), "--max-steps", str(args.steps), "--log-every", str(args.log_every),
           "--mixed-precision", "bf16" if args.precision == "amp_bf16" else "no", "--num-workers", str(args.workers),
           "--lr", "1e-3", "--warmup-steps", "10", "--no-progress", "--shuffle-buffer", "1000"]
    started = time.time()
    proc = subprocess.run(cmd, env=_env(procs, args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"clipkit run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = _windows_after_warmup([r["samples_per_s"] for r in rows if "samples_per_s" in r], "clipkit")
    usage = json.loads((out / "summary.json").read_text()).get("utilisation", {})
    return {"samples_per_s": sum(rates) / len(rates), "windows": len(rates), "wall_s": round(time.time() - started, 1),
            "gflop_per_sample": usage.get("gflop_per_sample"), "peak_gflops": usage.get("peak_gflops")}


def run_open_clip(args, procs: int, work: Path) -> dict:
    preset = json.loads((REPO / "clipkit" / "configs" / f"{args.model}.json").read_text())
    cfg_dir = work / "open_clip_configs"
    cfg_dir.mkdir(exist_ok=True)
    name = f"clipkit-{args.model}"
    (cfg_dir / f"{name}.json").write_text(json.dumps(preset["model_cfg"]))
    from clipkit.data.shards import count_samples

    total = count_samples(args.data) or 0
    samples = min(total, args.steps * args.batch * procs)       # one epoch = `steps` steps
    logs = work / f"openclip-{procs}"
    # Two compatibility shims, no change to the work done: open_clip_train imports pandas for
    # its CSV datasets only (the venv has none; the webdataset path never uses it), and its
    # group_by_keys_nothrow predates webdataset 1.0's end-of-shard marker (a dict without
    # "fname"), so the markers are filtered out of its tar expander.
    code = ("import sys, types, open_clip; sys.modules.setdefault('pandas', types.ModuleType('pandas')); "
            "import open_clip_train.data as d; _exp = d.tar_file_expander; "
            "d.tar_file_expander = lambda *a, **k: (s for s in _exp(*a, **k) if 'fname' in s); "
            "open_clip.add_model_config(sys.argv[1]); "
            "from open_clip_train.main import main; main(sys.argv[2:])")
    cmd = [*_launcher(procs), "-c", code] if procs == 1 else [*_launcher(procs), str(work / "oc_entry.py")]
    if procs > 1:
        (work / "oc_entry.py").write_text(code.replace("; ", "\n"))
    cmd += [str(cfg_dir), "--train-data", args.data, "--train-num-samples", str(samples),
            "--dataset-type", "webdataset", "--batch-size", str(args.batch), "--precision", args.precision,
            "--workers", str(args.workers), "--model", name, "--epochs", "1", "--lr", "1e-3", "--warmup", "10",
            "--logs", str(logs), "--name", "bench", "--save-frequency", "0", "--log-every-n-steps", str(args.log_every),
            "--report-to", "", "--seed", "0", "--wd", "0.1"]
    started = time.time()
    proc = subprocess.run(cmd, env=_env(procs, args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    text = (logs / "bench" / "out.log").read_text()
    batch_times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+),", text)]
    # its first row is after 1 step (i % n == 0 at i = 0): skip it and the warm-up window after it
    times = _windows_after_warmup(batch_times[1:], "open_clip_train")
    rates = [args.batch * procs / t for t in times]
    return {"samples_per_s": sum(rates) / len(rates), "windows": len(rates), "wall_s": round(time.time() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "runs/data/shapes-train/{00000..00003}.tar"), help="train shards")
    p.add_argument("--model", default="shapes-small", help="clipkit preset [shapes-small]")
    p.add_argument("--batch", type=int, default=128, help="per-process batch [128]")
    p.add_argument("--precision", choices=("fp32", "amp_bf16"), default="fp32", help="[fp32]")
    p.add_argument("--steps", type=int, default=60, help="steps per run [60]")
    p.add_argument("--log-every", type=int, default=15, help="window length in steps [15]")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process [1]")
    p.add_argument("--threads", type=int, help="intra-op threads per process, both trainers [cores / procs]")
    p.add_argument("--procs", type=int, nargs="+", default=[1], help="process counts to run [1]")
    p.add_argument("--only", choices=("ours", "open_clip", "both"), default="both")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        for procs in args.procs:
            load = os.getloadavg()[0]
            row = {"procs": procs, "load_before": round(load, 2)}
            if args.only in ("ours", "both"):
                row["clipkit"] = run_ours(args, procs, work)
            if args.only in ("open_clip", "both"):
                row["open_clip_train"] = run_open_clip(args, procs, work)
            row["load_after"] = round(os.getloadavg()[0], 2)
            results.append(row)
    print(f"\n{args.model}, batch {args.batch}/process, {args.precision}, {args.workers} worker(s)/process, "
          f"{args.steps} steps, CPU ({os.cpu_count()} cores, OMP_NUM_THREADS {args.threads or 'cores/procs'}), "
          f"warm-up window excluded")
    print(f"{'procs':>5} {'clipkit samples/s':>18} {'open_clip_train samples/s':>26} {'ratio':>6}  "
          f"{'GFLOP/sample':>12} {'% of peak (ours / theirs)':>26}  load 1-min")
    for row in results:
        ours = row.get("clipkit", {}).get("samples_per_s")
        theirs = row.get("open_clip_train", {}).get("samples_per_s")
        ratio = f"{ours / theirs:.2f}x" if ours and theirs else "-"
        # Same architecture and batch: the FLOPs per sample counted in our run hold for theirs too.
        g, peak = row.get("clipkit", {}).get("gflop_per_sample"), row.get("clipkit", {}).get("peak_gflops")
        frac = lambda rate: f"{100 * g * rate / (peak * row['procs']):.1f}%" if g and peak and rate else "-"
        print(f"{row['procs']:>5} {ours or float('nan'):>18.1f} {theirs or float('nan'):>26.1f} {ratio:>6}  "
              f"{g or float('nan'):>12.3f} {frac(ours) + ' / ' + frac(theirs):>26}  "
              f"{row['load_before']} -> {row['load_after']}")
    print("peak: this machine's matmul FLOP/s in the run's precision with one process's threads "
          "(clipkit.perf.matmul_peak); with N processes the machine's peak is N x that")
    if len(results) > 1 and all("clipkit" in r for r in results):
        base = results[0]["clipkit"]["samples_per_s"]
        for row in results[1:]:
            print(f"clipkit {row['procs']} vs {results[0]['procs']} process(es): "
                  f"{row['clipkit']['samples_per_s'] / base:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
