"""`clipkit demo`: the whole loop on the shapes world, with a report at the end."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_float

    p = sub.add_parser(
        "demo",
        help="run the whole loop on the shapes world (what `make demo` runs)",
        description="Shapes shards -> CLIP -> retrieval -> unCLIP -> report. Stages whose "
        "outputs already exist are skipped, so a re-run resumes.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder [runs/demo]")
    p.add_argument("--quick", action="store_true", help="tiny settings: the whole chain in a few minutes")
    p.add_argument("--force", action="store_true", help="redo every stage even if its outputs exist")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even if it is a folder clipkit did not write (same-named files replaced)",
    )
    p.add_argument(
        "--genlab",
        type=positive_float,
        nargs="?",
        const=90.0,
        default=None,
        metavar="SECONDS",
        help="also run the generation lab (autoregression vs diffusion on images, and unCLIP's AR "
        "prior vs the diffusion prior) with SECONDS of training per model [90]; about 15 more "
        "minutes on 2 cores. `clipkit gen-lab` runs it alone",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.shapes.demo import run_demo

    run_demo(args.out, quick=args.quick, force=args.force, genlab=args.genlab, overwrite=args.overwrite)
    return 0
