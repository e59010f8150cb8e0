"""`clipkit shapes`: write shapes-world samples as img2dataset-style webdataset shards."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import nonnegative_int, positive_int

    p = sub.add_parser(
        "shapes",
        help="write the synthetic shapes dataset as webdataset shards",
        description="Write N shapes samples (PNG + caption + JSON attributes) as "
        "DIR/00000.tar ... with img2dataset-style DIR/00000_stats.json counts.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num", type=positive_int, default=20_000, help="number of samples (images) [20000]")
    p.add_argument(
        "--split", choices=("train", "val", "holdout", "hat_pairs"), default="train", help="which split [train]"
    )
    p.add_argument("--shard-size", type=positive_int, default=5_000, help="samples per tar [5000]")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed [0]")
    p.add_argument("--image-size", type=positive_int, default=32, help="image side in pixels [32]")
    p.add_argument(
        "--overwrite", action="store_true", help="replace whatever is at --out (once the new shards are complete)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from clipkit.io import staged_output, write_manifest
    from clipkit.shapes.world import write_split

    # Written whole or not at all, and never over a folder of someone else's files (clipkit.io).
    with staged_output(args.out, "clipkit-shards", overwrite=args.overwrite) as stage:
        stats = write_split(
            stage.dir,
            split=args.split,
            num=args.num,
            seed=args.seed,
            shard_size=args.shard_size,
            image_size=args.image_size,
            progress=True,
        )
        names = [Path(s).name for s in stats["shards"]]
        parts = {n: None for n in names} | {n.replace(".tar", "_stats.json"): None for n in names}
        write_manifest(stage.dir, "clipkit-shards", parts, count=stats["count"], split=args.split, seed=args.seed)
    print(f"wrote {stats['count']} {args.split} samples in {len(stats['shards'])} shard(s) to {args.out}")
    return 0
