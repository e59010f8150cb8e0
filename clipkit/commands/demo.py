"""`clipkit demo`: the whole loop on the shapes world, with a report at the end."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole loop on the shapes world (what `make demo` runs)",
                       description="Shapes shards -> CLIP -> retrieval -> unCLIP -> report. Stages whose "
                                   "outputs already exist are skipped, so a re-run resumes.")
    p.add_argument("--out", default="runs/demo", help="output folder [runs/demo]")
    p.add_argument("--quick", action="store_true", help="tiny settings: the whole chain in a few minutes")
    p.add_argument("--force", action="store_true", help="redo every stage even if its outputs exist")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.experiments.demo import run_demo

    run_demo(args.out, quick=args.quick, force=args.force)
    return 0
