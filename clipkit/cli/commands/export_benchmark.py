"""`clipkit export-benchmark`: a labelled folder (ROOT/<class>/*) -> CLIP_benchmark's webdataset layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_int

    p = sub.add_parser(
        "export-benchmark",
        help="write a labelled folder in CLIP_benchmark's webdataset layout",
        description="ROOT/<class>/*.jpg (captions from <stem>.txt beside images, if any) -> "
        "OUT/classnames.txt, OUT/zeroshot_classification_templates.txt, "
        "OUT/dataset_type.txt, OUT/<split>/{0..n-1}.tar + nshards.txt; read by "
        "`clipkit eval --dataset OUT` and `clip_benchmark eval --dataset wds/NAME "
        "--dataset_root OUT`.",
    )
    p.add_argument("root", help="labelled folder: one sub-folder of images per class")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--split", default="test", help="split to write (test, train, ...) [test]")
    p.add_argument(
        "--templates", default=None, help="openai | simple | none | FILE of '{c}' or '{}' templates [simple]"
    )
    p.add_argument("--no-captions", action="store_true", help="do not store <stem>.txt captions as `txt`")
    p.add_argument("--shard-size", type=positive_int, default=10_000, help="samples per tar [10000]")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even if it is a folder clipkit did not write (its split is replaced)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.evaluation import export_labelled_folder

    summary = export_labelled_folder(
        args.root,
        args.out,
        templates=args.templates,
        split=args.split,
        captions=not args.no_captions,
        shard_size=args.shard_size,
        progress=True,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {summary['count']} samples in {summary['shards']} shard(s) to {summary['path']}/{summary['split']}"
        + (f"; {summary['skipped_note']}" if summary.get("skipped_note") else "")
    )
    return 0
