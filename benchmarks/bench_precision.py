"""fp32 vs bf16 on this CPU's matrix units, side by side on the same work: speed, utilisation and quality.

    python benchmarks/bench_precision.py --data runs/data --clip runs/demo/clip/model
    python benchmarks/bench_precision.py ... --clip-epochs 3 --decoder-steps 1500   # quality runs (long)
    python benchmarks/bench_precision.py --only shapes                              # matmul probe only (seconds)

For each model it trains the same config twice, fp32 then bf16 (Accelerate's autocast,
fp32 master weights), and reports samples/s (training windows after the first), the
FLOPs per sample counted by torch, the fraction of this machine's matmul peak in that
precision (clipkit.perf), and quality:
- CLIP (`shapes-small`): zero-shot accuracy per attribute on val and holdout shards;
- decoder (`shapes-decoder` preset, on the frozen --clip): inversion agreement with the
  true attributes of held-out images, judged by the independent shapes judge;
- DDIM-50 sampling of that decoder: seconds per image and judge agreement, fp32 vs bf16.
The prior and the upsampler (64 px shards in --data/train64) are timed the same way.
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
    from clipkit.shapes import config_path
    from clipkit.shapes.evaluate import clip_evaluator
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
            overrides.update(max_steps=args.clip_steps, val_data=None, holdout_data=None)
        summary = train_clip(load_config(ClipTrainConfig, config_path("shapes-small"), overrides),
                             evaluators=(clip_evaluator,))
        ev = summary["eval"]
        rows.append({"model": "CLIP shapes-small", "precision": precision, "samples_per_s": _rate(work / f"clip-{precision}"),
                     **summary["utilisation"], "steps": summary["steps"],
                     "quality": {k: round(v, 3) for k, v in ev.items() if "/zs_" in k and "mean" not in k}})
    return rows


def bench_decoder(args, work: Path) -> list[dict]:
    import clipkit
    from clipkit.shapes import config_path
    from clipkit.shapes.judge import ShapesJudge, real_images
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


def bench_prior_upsampler(args, work: Path) -> list[dict]:
    """Speed (and the trainer's own quality figure) of the prior and the upsampler, fp32 vs bf16."""
    from clipkit.shapes import config_path
    from clipkit.train.config import load_config
    from clipkit.train.configs import PriorTrainConfig, UpsamplerTrainConfig
    from clipkit.train.unclip import train_prior, train_upsampler

    rows = []
    jobs = [("prior shapes-prior", PriorTrainConfig, "shapes-prior", train_prior, args.data / "train",
             {"max_steps": args.prior_steps, "num_samples": args.decoder_samples}, "val_cosine_prior")]
    if (args.data / "train64").is_dir():
        jobs.append(("upsampler shapes-upsampler", UpsamplerTrainConfig, "shapes-upsampler", train_upsampler,
                     args.data / "train64", {"max_steps": args.upsampler_steps, "num_samples": 2000}, "final_loss"))
    for model, cls, preset, train, data, extra, quality in jobs:
        for precision in ("no", "bf16"):
            out = work / f"{preset}-{precision}"
            summary = train(load_config(cls, config_path(preset), {
                "clip": args.clip, "train_data": str(data), "out_dir": str(out), "pipeline_dir": str(out / "pipeline"),
                "mixed_precision": precision, "progress": False, "num_threads": args.threads,
                "checkpoint_every": None, "log_every": 25, **extra}))
            rows.append({"model": model, "precision": precision, "samples_per_s": _rate(out),
                         **summary["utilisation"], "steps": summary["steps"],
                         "quality": {quality: round(summary[quality], 4)}})
    return rows


def _best(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_matmul_shapes() -> list[dict]:
    """GFLOP/s of the matmul shapes these models run (tokens x width), fp32 vs bf16, and of a Linear layer's
    forward + backward under CPU autocast with fp32 master weights (the cast copies included)."""
    rows = []
    shapes = [(2048, 2048, 2048, "peak probe"),
              (3072, 128, 128, "CLIP text attention proj (128 captions x 24 tokens, width 128)"),
              (3072, 128, 512, "CLIP text MLP (width 128 -> 512)"),
              (8192, 64, 64, "UNet 64 channels at 16 x 16 tokens x 32 images"),
              (2048, 128, 512, "width 128 -> 512 at 2048 rows (prior, decoder)")]
    for m, k, n, what in shapes:
        row = {"shape": f"{m}x{k} @ {k}x{n}", "what": what}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            row[f"{name}_gflops"] = 2 * m * k * n / _best(lambda: torch.mm(a, b)) / 1e9
        layer, x = torch.nn.Linear(k, n), torch.randn(m, k, requires_grad=True)

        def step(autocast: bool):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = layer(x)
            y.float().sum().backward()

        for name, flag in (("fp32", False), ("bf16_autocast", True)):
            row[f"linear_fwd_bwd_{name}_gflops"] = 3 * 2 * m * k * n / _best(lambda: step(flag)) / 1e9
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
    p.add_argument("--prior-steps", type=int, default=300, help="prior steps per precision [300]")
    p.add_argument("--upsampler-steps", type=int, default=100, help="upsampler steps per precision, if --data has "
                   "train64/ (64 px shards) [100]")
    p.add_argument("--eval-images", type=int, default=64, help="held-out images judged [64]")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads [2]")
    p.add_argument("--only", choices=("clip", "decoder", "prior-upsampler", "both", "shapes"), default="both",
                   help="which models to train; 'shapes' runs only the matmul probe (seconds)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    shape_rows = bench_matmul_shapes()
    print(f"matmul GFLOP/s at these models' shapes, {args.threads} threads (best of 5):")
    print(f"{'shape':<22} {'fp32':>7} {'bf16':>7} {'ratio':>6} | Linear fwd+bwd: {'fp32':>6} {'autocast':>8}  what")
    for r in shape_rows:
        print(f"{r['shape']:<22} {r['fp32_gflops']:>7.0f} {r['bf16_gflops']:>7.0f} {r['bf16_gflops'] / r['fp32_gflops']:>5.1f}x"
              f" | {'':>14} {r['linear_fwd_bwd_fp32_gflops']:>6.0f} {r['linear_fwd_bwd_bf16_autocast_gflops']:>8.0f}  {r['what']}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        if args.only in ("clip", "both"):
            rows += bench_clip(args, Path(tmp))
        if args.only in ("decoder", "both"):
            rows += bench_decoder(args, Path(tmp))
        if args.only in ("prior-upsampler", "both"):
            rows += bench_prior_upsampler(args, Path(tmp))
    print(f"\nfp32 vs bf16, {args.threads} threads, load {load:.2f} -> {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"{'model':<27} {'precision':>9} {'samples/s':>10} {'GFLOP/smp':>10} {'GFLOP/s':>8} {'% peak':>7}  quality")
    for r in rows:
        quality = r.get("quality") or {k: v for k, v in r.items() if k.startswith("ddim50")}
        print(f"{r['model']:<27} {r['precision']:>9} {r['samples_per_s']:>10.1f} {r['gflop_per_sample']:>10.4f} "
              f"{r['achieved_gflops']:>8.1f} {100 * r['peak_fraction']:>6.1f}%  {quality}")
    for model in sorted({r["model"] for r in rows}):
        pair = [r for r in rows if r["model"] == model]
        if len(pair) == 2:
            print(f"{model}: bf16 / fp32 samples/s = {pair[1]['samples_per_s'] / pair[0]['samples_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": rows, "matmul_shapes": shape_rows}, indent=2))


if __name__ == "__main__":
    main()
