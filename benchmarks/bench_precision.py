"""fp32 vs bf16 on this CPU's matrix units, side by side on the same work: speed, utilisation and quality.

    python benchmarks/bench_precision.py --data runs/data --clip runs/demo/clip/model
    python benchmarks/bench_precision.py ... --clip-epochs 3 --decoder-steps 1500   # quality runs (long)
    python benchmarks/bench_precision.py --only shapes                              # matmul probe only (seconds)

For each model it trains the same config in fp32 and in bf16 (Accelerate's autocast,
fp32 master weights), alternating the two (fp32, bf16; bf16, fp32; ...) for --rounds
rounds through benchmarks/protocol.py, and reports samples/s (training windows after the
first; median over rounds with its range), the bf16 / fp32 ratio of each round, the
FLOPs per sample counted by torch, the fraction of this machine's matmul peak in that
precision (clipkit.perf), and quality (median over rounds):
- CLIP (`shapes-small`): zero-shot accuracy per attribute on val and holdout shards;
- decoder (`shapes-decoder` recipe, on the frozen --clip): inversion agreement with the
  true attributes of held-out images, judged by the independent shapes judge;
- DDIM-50 sampling of that decoder: seconds per image and judge agreement, fp32 vs bf16.
The prior and the upsampler (64 px shards in --data/train64) are timed the same way.
The matmul probe alternates fp32 and bf16 the same way, shape by shape.
--data is a folder with train/ val/ holdout/ shapes shards (`clipkit shapes` or a demo's data/).
A window in which other processes took CPU is marked and left out of the medians (--strict
stops instead). Tables printed and written to benchmarks/results/precision.json / .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import clipkit
from clipkit.config import load_config
from clipkit.shapes import config_path
from clipkit.shapes.evaluate import clip_evaluator
from clipkit.shapes.judge import ShapesJudge, real_images
from clipkit.train.clip import train_clip
from clipkit.train.config import ClipTrainConfig, DecoderTrainConfig, PriorTrainConfig, UpsamplerTrainConfig
from clipkit.train.unclip import train_decoder, train_prior, train_upsampler

import protocol

PRECISIONS = {"fp32": "no", "bf16": "bf16"}  # table name -> Accelerate's mixed_precision
_RUN_IDS = itertools.count()


def _rate(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in x]
    rates = [r["samples_per_s"] for r in rows][1:] or [r["samples_per_s"] for r in rows]
    return sum(rates) / len(rates)


def _measures(out: Path, summary: dict, quality: dict) -> dict:
    """One run's numbers: speed, utilisation, and quality keys prefixed 'quality:'."""
    usage = summary["utilisation"]
    return {
        "samples_per_s": _rate(out),
        "gflop_per_sample": usage["gflop_per_sample"],
        "achieved_gflops": usage["achieved_gflops"],
        "peak_fraction": usage["peak_fraction"],
        "steps": summary["steps"],
        **{f"quality:{k}": float(v) for k, v in quality.items()},
    }


def clip_job(args, work: Path):
    def run(precision: str) -> dict:
        out = work / f"clip-{precision}-{next(_RUN_IDS)}"
        overrides = {
            "train_data": str(args.data / "train"),
            "out_dir": str(out),
            "mixed_precision": precision,
            "progress": False,
            "num_threads": args.threads,
            "checkpoint_every": None,
            "eval_every": None,
            "log_every": 20,
        }
        if args.clip_epochs:
            overrides.update(
                epochs=args.clip_epochs, val_data=str(args.data / "val"), holdout_data=str(args.data / "holdout")
            )
        else:
            overrides.update(max_steps=args.clip_steps, val_data=None, holdout_data=None)
        summary = train_clip(
            load_config(ClipTrainConfig, config_path("shapes-small"), overrides), evaluators=(clip_evaluator,)
        )
        quality = {k: v for k, v in summary["eval"].items() if "/zs_" in k and "mean" not in k}
        return _measures(out, summary, quality)

    return "CLIP shapes-small", run


def decoder_job(args, work: Path):
    judge = ShapesJudge.load()
    images, attrs = real_images("val", args.eval_images, 32, seed=4242)

    def run(precision: str) -> dict:
        out = work / f"decoder-{precision}-{next(_RUN_IDS)}"
        summary = train_decoder(
            load_config(
                DecoderTrainConfig,
                config_path("shapes-decoder"),
                {
                    "clip": args.clip,
                    "train_data": str(args.data / "train"),
                    "out_dir": str(out),
                    "pipeline_dir": str(out / "pipeline"),
                    "mixed_precision": precision,
                    "max_steps": args.decoder_steps,
                    "num_samples": args.decoder_samples,
                    "progress": False,
                    "num_threads": args.threads,
                    "checkpoint_every": None,
                    "log_every": 25,
                },
            )
        )
        pipe = clipkit.UnCLIP.load(out / "pipeline")
        emb = pipe.clip.encode_images(images)
        quality = {}
        for sample_precision in ("fp32", "bf16"):
            start = time.perf_counter()
            x = pipe.decode(emb, steps=50, seed=0, output="tensor", precision=sample_precision)
            quality[f"ddim50_{sample_precision}_s_per_image"] = (time.perf_counter() - start) / len(emb)
            quality[f"ddim50_{sample_precision}_agreement"] = judge.agreement(x, attrs)["mean"]
        return _measures(out, summary, quality)

    return "decoder shapes-decoder", run


def prior_upsampler_jobs(args, work: Path) -> list:
    """Speed (and the trainer's own quality figure) of the prior and the upsampler."""
    specs = [
        (
            "prior shapes-prior",
            PriorTrainConfig,
            "shapes-prior",
            train_prior,
            args.data / "train",
            {"max_steps": args.prior_steps, "num_samples": args.decoder_samples},
            "val_cosine_prior",
        )
    ]
    if (args.data / "train64").is_dir():
        specs.append(
            (
                "upsampler shapes-upsampler",
                UpsamplerTrainConfig,
                "shapes-upsampler",
                train_upsampler,
                args.data / "train64",
                {"max_steps": args.upsampler_steps, "num_samples": 2000},
                "final_loss",
            )
        )
    jobs = []
    for model, cls, recipe, train, data, extra, quality in specs:

        def run(precision: str, cls=cls, recipe=recipe, train=train, data=data, extra=extra, quality=quality) -> dict:
            out = work / f"{recipe}-{precision}-{next(_RUN_IDS)}"
            summary = train(
                load_config(
                    cls,
                    config_path(recipe),
                    {
                        "clip": args.clip,
                        "train_data": str(data),
                        "out_dir": str(out),
                        "pipeline_dir": str(out / "pipeline"),
                        "mixed_precision": precision,
                        "progress": False,
                        "num_threads": args.threads,
                        "checkpoint_every": None,
                        "log_every": 25,
                        **extra,
                    },
                )
            )
            return _measures(out, summary, {quality: summary[quality]})

        jobs.append((model, run))
    return jobs


def _gflops(fn, flops: float, reps: int = 5) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - start) / 1e9


MATMUL_SHAPES = [
    (2048, 2048, 2048, "peak probe"),
    (3072, 128, 128, "CLIP text attention proj (128 captions x 24 tokens, width 128)"),
    (3072, 128, 512, "CLIP text MLP (width 128 -> 512)"),
    (8192, 64, 64, "UNet 64 channels at 16 x 16 tokens x 32 images"),
    (2048, 128, 512, "width 128 -> 512 at 2048 rows (prior, decoder)"),
]


def _probe_shape(args, m: int, k: int, n: int, what: str) -> tuple[list, dict]:
    """One MATMUL_SHAPES entry: its table row and its data record."""
    mats = {
        name: (torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype))
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    layer, x = torch.nn.Linear(k, n), torch.randn(m, k, requires_grad=True)

    def step(autocast: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.float().sum().backward()

    mm = protocol.interleave(
        {
            name: (lambda a=a, b=b: {"gflops": _gflops(lambda: torch.mm(a, b), 2 * m * k * n)})
            for name, (a, b) in mats.items()
        },
        rounds=args.rounds,
        strict=args.strict,
        log=None,
    )
    lin = protocol.interleave(
        {
            name: (lambda flag=flag: {"gflops": _gflops(lambda: step(flag), 6 * m * k * n)})
            for name, flag in (("fp32", False), ("bf16 autocast", True))
        },
        rounds=args.rounds,
        strict=args.strict,
        log=None,
    )
    mm_s, lin_s = mm.summary("gflops"), lin.summary("gflops")
    ratio = mm.ratio("gflops", "bf16", "fp32")
    row = [
        f"{m}x{k} @ {k}x{n}",
        what,
        protocol.median_range(mm_s.get("fp32")),
        protocol.median_range(mm_s.get("bf16")),
        protocol.median_range(ratio, "x"),
        protocol.median_range(lin_s.get("fp32")),
        protocol.median_range(lin_s.get("bf16 autocast")),
    ]
    datum = {
        "shape": [m, k, n],
        "what": what,
        "matmul": mm_s,
        "matmul_ratio_bf16_over_fp32": ratio,
        "linear_fwd_bwd": lin_s,
        "contended_windows": mm.contended_windows() + lin.contended_windows(),
    }
    return row, datum


def matmul_probe(args) -> tuple[list, str]:
    """GFLOP/s of the matmul shapes these models run (tokens x width), fp32 vs bf16, and of a Linear layer's
    forward + backward under CPU autocast with fp32 master weights (the cast copies included)."""
    rows, data = [], []
    for m, k, n, what in MATMUL_SHAPES:
        row, datum = _probe_shape(args, m, k, n, what)
        rows.append(row)
        data.append(datum)
    caption = (
        f"**Matmul GFLOP/s at these models' shapes, fp32 vs bf16** — {args.threads} threads, CPU; "
        f"each cell is the median over {args.rounds} interleaved round(s) (5 calls a round) with its range. "
        f"Linear fwd+bwd: an nn.Linear's forward and backward, fp32 vs bf16 autocast with fp32 weights "
        f"(the cast copies included).\n\n"
    )
    headers = [
        "shape",
        "what",
        "fp32 GFLOP/s",
        "bf16 GFLOP/s",
        "bf16 / fp32",
        "Linear fwd+bwd fp32",
        "Linear fwd+bwd bf16 autocast",
    ]
    return data, caption + protocol.markdown_table(headers, rows)


def train_models(args, work: Path) -> tuple[dict, str]:
    jobs = []
    if args.only in ("clip", "both"):
        jobs.append(clip_job(args, work))
    if args.only in ("decoder", "both"):
        jobs.append(decoder_job(args, work))
    if args.only in ("prior-upsampler", "both"):
        jobs += prior_upsampler_jobs(args, work)
    rows, data = [], {}
    for model, run in jobs:
        runs = protocol.interleave(
            {name: (lambda mp=mp, run=run: run(mp)) for name, mp in PRECISIONS.items()},
            rounds=args.rounds,
            strict=args.strict,
            log=lambda line, model=model: print(f"{model}: {line}"),
        )
        summary = runs.summary("samples_per_s")
        for name, cell, spread, clean in protocol.contender_rows(runs, "samples_per_s"):
            mine = [m for n, _, m, w in runs.runs if n == name and not w.contended] or [
                m for n, _, m, _ in runs.runs if n == name
            ]
            med = {k: statistics.median(m[k] for m in mine) for k in mine[0] if k != "steps"}
            quality = ", ".join(f"{k.split(':', 1)[1]} {v:.3g}" for k, v in med.items() if k.startswith("quality:"))
            rows.append(
                [
                    model,
                    name,
                    cell,
                    spread,
                    clean,
                    med["gflop_per_sample"],
                    med["achieved_gflops"],
                    f"{100 * med['peak_fraction']:.1f}%",
                    quality,
                ]
            )
        ratio = runs.ratio("samples_per_s", "bf16", "fp32")
        rows.append(
            [
                model,
                "**bf16 / fp32** (per round)",
                protocol.median_range(ratio, "x"),
                "",
                protocol.clean_rounds(ratio, args.rounds),
                "",
                "",
                "",
                "",
            ]
        )
        data[model] = {
            "summary": summary,
            "ratio_bf16_over_fp32": ratio,
            "contended_windows": runs.contended_windows(),
            "runs": [
                {"precision": n, "round": r + 1, **m, "foreign_cores": w.foreign_cores} for n, r, m, w in runs.runs
            ],
        }
    caption = (
        f"**Training, fp32 vs bf16 autocast** — same config, same data, {args.threads} threads, CPU; the two "
        f"precisions alternate over {args.rounds} round(s). samples/s: windows after the first, median over "
        f"clean rounds with its range; spread = (max - min) / median; % peak = achieved GFLOP/s over this "
        f"machine's matmul peak in that precision (clipkit.perf); quality: median over rounds (zs_*: zero-shot "
        f"accuracy; ddim50_*: DDIM-50 sampling of the trained decoder, judged).\n\n"
    )
    headers = [
        "model",
        "precision",
        "samples/s: median (range)",
        "spread",
        "clean rounds",
        "GFLOP/sample",
        "GFLOP/s",
        "% peak",
        "quality",
    ]
    return data, caption + protocol.markdown_table(headers, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("runs/demo/data"), help="folder with train/ val/ holdout/ shards")
    p.add_argument("--clip", default="runs/demo/clip/model", help="a trained shapes CLIP for the decoder runs")
    p.add_argument("--clip-steps", type=int, default=120, help="speed-only CLIP run length [120]")
    p.add_argument(
        "--clip-epochs", type=int, default=0, help="train this many epochs for quality instead [0 = speed only]"
    )
    p.add_argument("--decoder-steps", type=int, default=300, help="decoder steps per run [300]")
    p.add_argument("--decoder-samples", type=int, default=5000, help="training images for the decoder [5000]")
    p.add_argument("--prior-steps", type=int, default=300, help="prior steps per run [300]")
    p.add_argument(
        "--upsampler-steps",
        type=int,
        default=100,
        help="upsampler steps per run, if --data has train64/ (64 px shards) [100]",
    )
    p.add_argument("--eval-images", type=int, default=64, help="held-out images judged [64]")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads [2]")
    p.add_argument(
        "--only",
        choices=("clip", "decoder", "prior-upsampler", "both", "shapes"),
        default="both",
        help="which models to train; 'shapes' runs only the matmul probe (seconds)",
    )
    protocol.add_arguments(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results, tables = {"args": {k: str(v) for k, v in vars(args).items()}}, []
    results["matmul_shapes"], table = matmul_probe(args)
    tables.append(table)
    print("\n" + table)
    if args.only != "shapes":
        with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
            results["models"], table = train_models(args, Path(tmp))
        tables.append(table)
        print("\n" + table)
    path = protocol.write_results("precision", results, "\n".join(tables))
    print(f"written: {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
