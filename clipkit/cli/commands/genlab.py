"""`clipkit gen-lab`: one-shot regression, pixel autoregression and diffusion on the same prompts and budget."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_float, positive_int

    p = sub.add_parser(
        "gen-lab",
        help="autoregression vs diffusion on shapes images: train, sample, judge, report",
        description="Train a one-shot regressor, two pixel-by-pixel autoregressive transformers "
        "(raster and spread-out order, k pixels per step) and a diffusion UNet for the "
        "same training time each; sample the same prompts with every method (DDPM / "
        "DDIM / flow at several step counts); judge them with the independent shapes "
        "judge; write PNG figures, sample grids, metrics.json and index.html. With "
        "--prior-clip, also compare unCLIP's autoregressive and diffusion priors.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even if it is a folder clipkit did not write (same-named files replaced)",
    )
    p.add_argument("--quick", action="store_true", help="seconds of training per model (for tests and smoke runs)")
    p.add_argument("--budget", type=positive_float, default=None, help="training seconds per model [90; quick: 8]")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the budget counts: wall clock, or the training process's CPU time (fairer when the "
        "machine is shared; the run then takes longer) [wall]",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads for training and sampling [2: 1.6-2.1x one thread's steps here]",
    )
    p.add_argument(
        "--prior-clip",
        default=None,
        metavar="DIR",
        help="a saved CLIP: also train the AR and the diffusion prior on it and compare them",
    )
    p.add_argument(
        "--prior-data",
        default=None,
        metavar="SHARDS",
        help="image-caption shards for the prior comparison (default: shapes written into --out)",
    )
    p.add_argument(
        "--prior-pipeline",
        default=None,
        metavar="DIR",
        help="an UnCLIP folder with a decoder for that CLIP: judge text -> prior -> decoder images too",
    )
    p.add_argument(
        "--prior-steps", type=positive_int, default=None, help="optimiser steps of each prior [1000; quick: 30]"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from clipkit.io import claim_output
    from clipkit.labs.genlab import QUICK, GenLabConfig, run_gen_lab
    from clipkit.labs.genlab.lab import LAB_FORMAT
    from clipkit.perf import torch_threads

    # claimed before any work (the prior comparison writes into it first)
    claim_output(args.out, LAB_FORMAT, [args.prior_clip, args.prior_data, args.prior_pipeline], args.overwrite)

    config = QUICK if args.quick else GenLabConfig()
    config = replace(config, clock=args.clock, threads=args.threads or config.threads)
    if args.budget is not None:
        config = replace(config, budget_seconds=args.budget)
    priors = None
    if args.prior_clip is not None:
        from clipkit.labs.genlab.priors import compare_priors

        with torch_threads(config.threads):
            priors = compare_priors(
                args.prior_clip,
                f"{args.out}/priors",
                data=args.prior_data,
                pipeline=args.prior_pipeline,
                quick=args.quick,
                steps=args.prior_steps,
                seed=args.seed,
            )
    m = run_gen_lab(
        args.out, config=config, quick=args.quick, seed=args.seed, prior_comparison=priors, overwrite=args.overwrite
    )
    from clipkit.labs.genlab.report import claims

    print(f"{'method':<16}{'evals':>8}{'s/image':>9}{'agree':>7}{'sharp':>7}{'FD/fl':>7}")
    for name, r in m["results"].items():
        print(
            f"{name:<16}{r['evaluations']:>8.0f}{r['seconds_per_image']:>9.4f}{r['agreement']['mean']:>7.3f}"
            f"{r['sharpness']:>7.3f}{r['frechet_ratio']:>7.2f}"
        )
    for claim, status, _ in claims(m):
        print(f"- {claim}: {status}")
    print(f"wrote figures, grids/, metrics.json and index.html to {args.out} in {m['seconds']:.0f} s")
    return 0
