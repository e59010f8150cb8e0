"""`clipkit icons`: a real image-caption set from a Debian icon theme (clipkit/labs/icons.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import nonnegative_int, positive_int

    p = sub.add_parser(
        "icons",
        help="render an installed icon theme into train / val / unseen-name shards",
        description="Render the SVG icons of an installed theme (apt-get install papirus-icon-theme) "
        "onto coloured backgrounds as img2dataset-style shards: OUT/train, OUT/val (other "
        "renders of seen names), OUT/unseen (names never in train); captions from the "
        "icon names, category and background in each sample's JSON.",
    )
    p.add_argument("--theme", default="papirus", help="theme name under /usr/share/icons, or its folder [papirus]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=positive_int, default=64, help="image side in pixels [64]")
    p.add_argument("--renders-per-icon", type=positive_int, default=12, help="renders of each picture [12]")
    p.add_argument("--limit", type=positive_int, default=None, help="use this many pictures (a seeded choice) [all]")
    p.add_argument("--unseen-fraction", type=float, default=0.1, help="fraction of names held out of train [0.1]")
    p.add_argument("--val-renders", type=nonnegative_int, default=1, help="renders of each seen picture in val [1]")
    p.add_argument("--categories", nargs="*", default=None, help="only these theme folders (apps places devices ...)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed [0]")
    p.add_argument("--shard-size", type=positive_int, default=5_000, help="samples per tar [5000]")
    p.add_argument("--overwrite", action="store_true", help="replace what is at --out (once the new set is complete)")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.labs.icons import make_icon_set

    stats = make_icon_set(
        **{
            k: getattr(args, k)
            for k in (
                "theme",
                "out",
                "size",
                "renders_per_icon",
                "limit",
                "unseen_fraction",
                "val_renders",
                "categories",
                "seed",
                "shard_size",
                "overwrite",
            )
        }
    )
    counts = ", ".join(f"{k} {v}" for k, v in stats["counts"].items())
    print(
        f"wrote {stats['renders']} renders of {stats['pictures']} pictures ({stats['pictures_found']} in "
        f"{stats['theme']}) to {args.out}: {counts}; {stats['names']['unseen']} unseen names; "
        f"{stats['seconds']} s"
    )
    return 0
