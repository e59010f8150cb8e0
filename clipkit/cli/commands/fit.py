"""`clipkit fit`: one command from image-caption shards to an unCLIP pipeline with a judged report."""

from __future__ import annotations

import argparse

RESUME_HINT = "each finished stage is kept: run the same command again to go on from where it stopped"


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import duration, positive_int

    p = sub.add_parser(
        "fit",
        help="train CLIP -> prior -> decoder (-> upsampler) on your shards, with a report",
        description="Train the whole stack on image-caption shards under one time budget: a CLIP "
        "(or --clip to start from one), the diffusion prior, the decoder and, at "
        "--image-size 64, the 32 -> 64 px upsampler; then an index of the held-out "
        "images and OUT/report.html (inversion pairs and text -> image grids with "
        "figures independent of the models). Finished stages are kept: the same "
        "command resumes.",
    )
    p.add_argument(
        "--train-data",
        required=True,
        metavar="SHARDS",
        help="image-caption shards (folder, brace pattern or '::' list)",
    )
    p.add_argument("--out", required=True, help="run folder (new, or an earlier fit's to resume)")
    p.add_argument(
        "--val-data",
        default=None,
        metavar="SHARDS",
        help="held-out shards for the CLIP's recall, the index and the report [the last training samples]",
    )
    p.add_argument(
        "--unseen-data",
        default=None,
        metavar="SHARDS",
        help="shards of captions never trained on: a grid of them in the report",
    )
    p.add_argument(
        "--time-budget",
        type=duration,
        default=None,
        metavar="T",
        help="wall-clock training time for all stages together, e.g. 45m or 1h30m: 30%% to the CLIP, the rest "
        "to the decoder beside the prior then the upsampler [each recipe's steps]",
    )
    p.add_argument("--max-steps", type=positive_int, default=None, help="cap on every stage's optimiser steps")
    p.add_argument(
        "--image-size",
        type=int,
        choices=(32, 64),
        default=32,
        help="32: a prior and a 32 px decoder; 64: adds the 32 -> 64 px upsampler [32]",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="the CLIP architecture: a preset, an open_clip name "
        "or a JSON model config [small-32px at either --image-size: it beat small-64px at equal time]",
    )
    p.add_argument(
        "--clip",
        default=None,
        metavar="M",
        help="start from this CLIP instead of training one: a saved directory, or an architecture with --pretrained",
    )
    p.add_argument("--pretrained", default=None, metavar="TAG|FILE", help="open_clip weights for --clip")
    p.add_argument(
        "--num-samples",
        type=positive_int,
        default=20_000,
        help="training samples the prior, decoder and upsampler read [20000]",
    )
    p.add_argument(
        "--judge",
        default=None,
        metavar="DIR",
        help="a judge from `clipkit judge train`: its identification of each decoded image's label in the report",
    )
    p.add_argument(
        "--label-field", default=None, metavar="F", help="the sample JSON field the judge names [the judge's first]"
    )
    p.add_argument("--report-images", type=positive_int, default=100, help="held-out images measured [100]")
    p.add_argument("--sample-steps", type=positive_int, default=50, help="decoder sampling steps in the report [50]")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument("--force", action="store_true", help="redo every stage even if it finished")
    p.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is a folder clipkit did not write"
    )
    p.set_defaults(func=run, interrupted_hint=RESUME_HINT)


def run(args) -> int:
    from clipkit.train.fit import FitConfig, fit

    config = FitConfig(
        train_data=args.train_data,
        out=args.out,
        val_data=args.val_data,
        unseen_data=args.unseen_data,
        image_size=args.image_size,
        model=args.model,
        clip=args.clip,
        pretrained=args.pretrained,
        time_budget=args.time_budget,
        max_steps=args.max_steps,
        num_samples=args.num_samples,
        judge=args.judge,
        label_field=args.label_field,
        report_images=args.report_images,
        steps=args.sample_steps,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    fit(config, force=args.force)
    return 0
