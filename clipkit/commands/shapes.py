"""`clipkit shapes`: write shapes-world samples as img2dataset-style webdataset shards."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.data.shapes import SPLITS

    p = sub.add_parser("shapes", help="write the synthetic shapes dataset as webdataset shards",
                       description="Write N shapes samples (PNG + caption + JSON attributes) as "
                                   "DIR/00000.tar ... with img2dataset-style DIR/00000_stats.json counts.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num", type=int, default=20_000, help="number of samples (images) [20000]")
    p.add_argument("--split", choices=SPLITS, default="train", help="which split [train]")
    p.add_argument("--shard-size", type=int, default=5_000, help="samples per tar [5000]")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels [32]")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.data.shapes import write_split

    stats = write_split(args.out, split=args.split, num=args.num, seed=args.seed,
                        shard_size=args.shard_size, image_size=args.image_size, progress=True)
    print(f"wrote {stats['count']} {args.split} samples in {len(stats['shards'])} shard(s) to {args.out}")
    return 0
