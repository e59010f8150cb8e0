"""fp32 vs bf16 on this CPU's matrix units, side by side on the same work: speed, utilisation and quality.

    python benchmarks/bench_precision.py --data runs/data --clip runs/demo/clip/model
    python benchmarks/bench_precision.py ... --clip-epochs 3 --decoder-steps 1500   # quality runs (long)

For each model it trains the same config twice, fp32 then bf16 (Accelerate's autocast,
fp32 master weights), and reports samples/s (training windows after the first), the
FLOPs per sample counted by torch, the fraction of this machine's matmul peak in that
precision (clipkit.perf), and quality:
- CLIP (`shapes-small`): zero-shot accuracy per attribute on val and holdout shards;
- decoder (`shapes-decoder` preset, on the frozen --clip): inversion agreement with the
  true attributes of held-out images, judged by the independent shapes judge;
- DDIM-50 sampling of that decoder: seconds per image and judge agreement, fp32 vs bf16.
--data is a folder with train/ val/ holdout/ shapes shards (`clipkit shapes` or a demo's data/).
Run it alone on the machine: a busy neighbour distorts every ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _rate(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in x]
    rates = [r["samples_per_s"] for r in rows][1:] or [r["samples_per_s"] for r in rows]
    return sum(rates) / len(rates)


def bench_clip(args, work: Path) -> list[dict]:
    from clipkit.experiments import config_path
    from clipkit.experiments.shapes_eval import clip_evaluator
    from clipkit.train.clip import train_clip
    from clipkit.train.config import load_config
    from clipkit.train.configs import ClipTrainConfig

    rows = []
    for precision in ("no", "bf16"):
        overrides = {"train_data": str(args.data / "train"), "out_dir": str(work / f"clip-{precision}"),
                     "mixed_precision": precision, "progress": False, "num_threads": args.threads,
                     "checkpoint_every": None, "eval_every": None, "log_every": 20}
        if args.clip_epochs:
            overrides.update(epochs=args.clip_epochs, val_data=str(args.data / "val"),
                             holdout_data=str(args.data / "holdout"))
        else:
            overrides.update(max_steps=args.clip_steps, val_data=None)
        summary = train_clip(load_config(ClipTrainConfig, config_path("shapes-small"), overrides),
                             evaluators=(clip_evaluator,))
        ev = summary["eval"]
        rows.append({"model": "CLIP shapes-small", "precision": precision, "samples_per_s": _rate(work / f"clip-{precision}"),
                     **summary["utilisation"], "steps": summary["steps"],
                     "quality": {k: round(v, 3) for k, v in ev.items() if "/zs_" in k and "mean" not in k}})
    return rows


def bench_decoder(args, work: Path) -> list[dict]:
    import clipkit
    from clipkit.experiments import config_path
    from clipkit.experiments.judge import ShapesJudge, real_images
    from clipkit.train.config import load_config
    from clipkit.train.configs import DecoderTrainConfig
    from clipkit.train.unclip import train_decoder

    judge = ShapesJudge.load()
    images, attrs = real_images("val", args.eval_images, 32, seed=4242)
    rows = []
    for precision in ("no", "bf16"):
        out = work / f"decoder-{precision}"
        summary = train_decoder(load_config(DecoderTrainConfig, config_path("shapes-decoder"), {
            "clip": args.clip, "train_data": str(args.data / "train"), "out_dir": str(out),
            "pipeline_dir": str(out / "pipeline"), "mixed_precision": precision, "max_steps": args.decoder_steps,
            "num_samples": args.decoder_samples, "progress": False, "num_threads": args.threads,
            "checkpoint_every": None, "log_every": 25}))
        pipe = clipkit.UnCLIP.load(out / "pipeline")
        emb = pipe.clip.encode_images(images)
        row = {"model": "decoder shapes-decoder", "precision": precision, "samples_per_s": _rate(out),
               **summary["utilisation"], "steps": summary["steps"]}
        for sample_precision in ("fp32", "bf16"):
            start = time.perf_counter()
            x = pipe.decode(emb, steps=50, seed=0, output="tensor", precision=sample_precision)
            seconds = (time.perf_counter() - start) / len(emb)
            row[f"ddim50_{sample_precision}_s_per_image"] = round(seconds, 4)
            row[f"ddim50_{sample_precision}_agreement"] = round(judge.agreement(x, attrs)["mean"], 3)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("runs/demo/data"), help="folder with train/ val/ holdout/ shards")
    p.add_argument("--clip", default="runs/demo/clip/model", help="a trained shapes CLIP for the decoder runs")
    p.add_argument("--clip-steps", type=int, default=120, help="speed-only CLIP run length [120]")
    p.add_argument("--clip-epochs", type=int, default=0, help="train this many epochs for quality instead [0 = speed only]")
    p.add_argument("--decoder-steps", type=int, default=300, help="decoder steps per precision [300]")
    p.add_argument("--decoder-samples", type=int, default=5000, help="training images for the decoder [5000]")
    p.add_argument("--eval-images", type=int, default=64, help="held-out images judged [64]")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads [2]")
    p.add_argument("--only", choices=("clip", "decoder", "both"), default="both")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        if args.only in ("clip", "both"):
            rows += bench_clip(args, Path(tmp))
        if args.only in ("decoder", "both"):
            rows += bench_decoder(args, Path(tmp))
    print(f"\nfp32 vs bf16, {args.threads} threads, load {load:.2f} -> {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"{'model':<24} {'precision':>9} {'samples/s':>10} {'GFLOP/smp':>10} {'GFLOP/s':>8} {'% peak':>7}  quality")
    for r in rows:
        quality = r.get("quality") or {k: v for k, v in r.items() if k.startswith("ddim50")}
        print(f"{r['model']:<24} {r['precision']:>9} {r['samples_per_s']:>10.1f} {r['gflop_per_sample']:>10.4f} "
              f"{r['achieved_gflops']:>8.1f} {100 * r['peak_fraction']:>6.1f}%  {quality}")
    for model in sorted({r["model"] for r in rows}):
        pair = [r for r in rows if r["model"] == model]
        if len(pair) == 2:
            print(f"{model}: bf16 / fp32 samples/s = {pair[1]['samples_per_s'] / pair[0]['samples_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
