"""`clipkit index build EMB_DIR OUT`: a FAISS index (with manifest and metadata) from `clipkit embed` output."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a FAISS index from an embedding folder")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    b = actions.add_parser("build", help="EMB_DIR (clip-retrieval layout) -> index folder OUT",
                           description="Build an EmbeddingIndex: kind 'auto' picks flat / HNSW / IVF-Flat / "
                                       "OPQ-IVF-PQ by size and memory and tunes nprobe / efSearch to --recall.")
    b.add_argument("emb_dir", metavar="EMB_DIR", help="folder written by `clipkit embed`")
    b.add_argument("out", metavar="OUT", help="index folder to write")
    b.add_argument("--modality", choices=("img", "text"), default=None, help="which embeddings [img when present]")
    b.add_argument("--kind", choices=("auto", "flat", "hnsw", "ivf", "ivfpq"), default="auto", help="[auto]")
    b.add_argument("--metric", choices=("ip", "l2"), default="ip", help="[ip]")
    b.add_argument("--recall", type=float, default=0.95, help="recall@10 target for tuning [0.95]")
    b.add_argument("--max-memory-gb", type=float, default=None, help="memory budget for auto [half the free RAM]")
    b.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_build(args) -> int:
    from clipkit.embeddings import EmbeddingFolder
    from clipkit.index import EmbeddingIndex

    folder = EmbeddingFolder(args.emb_dir)
    budget = int(args.max_memory_gb * 2**30) if args.max_memory_gb else None
    index = EmbeddingIndex.build(folder, kind=args.kind, metric=args.metric, recall_target=args.recall,
                                 max_memory=budget, modality=args.modality, progress=True)
    index.save(args.out)
    print(f"{index!r} built in {index.manifest['build_seconds']} s; saved to {args.out}")
    return 0
