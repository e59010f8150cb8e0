"""`clipkit index build EMB_DIR OUT` / `clipkit index add IDX EMB_DIR`: FAISS indexes from `clipkit embed` output."""

from __future__ import annotations

import argparse


def memory_size(text: str) -> int:
    """argparse type: bytes from '4G', '512M', '1.5T' or a plain number of bytes (finite, > 0)."""
    from clipkit.cli.types import positive_float

    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(t[-1:], 1)
    try:
        value = positive_float(t[:-1] if t[-1:] in units else t)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 4G, 512M or a number of bytes") from None
    return int(value * scale)


NO_VERIFY = (
    "skip the sha256 check of the files read (sizes are still checked): for very large embedding "
    "folders and indexes, where hashing costs ~0.7 s per GB [verify]"
)


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_float, positive_int, unit_interval

    p = sub.add_parser("index", help="build / grow a FAISS index from embedding folders")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    b = actions.add_parser(
        "build",
        help="EMB_DIR (clip-retrieval layout) -> index folder OUT",
        description="Build an EmbeddingIndex: kind 'auto' picks flat / HNSW / IVF-Flat / "
        "OPQ-IVF-PQ by size and --max-memory and tunes nprobe / efSearch to --recall. "
        "A previous index at OUT is replaced once the new one is complete; anything "
        "else there needs --overwrite.",
    )
    b.add_argument("emb_dir", metavar="EMB_DIR", help="folder written by `clipkit embed`")
    b.add_argument("out", metavar="OUT", help="index folder to write")
    b.add_argument("--modality", choices=("img", "text"), default=None, help="which embeddings [img when present]")
    b.add_argument("--kind", choices=("auto", "flat", "hnsw", "ivf", "ivfpq"), default="auto", help="[auto]")
    b.add_argument("--metric", choices=("ip", "l2"), default="ip", help="[ip]")
    b.add_argument(
        "--recall",
        type=unit_interval,
        default=0.95,
        help="recall@10 that queries like the data get on average, e.g. 0.99: nprobe / efSearch are tuned "
        "on rows held out of the index, to a 95%% lower confidence bound [0.95]",
    )
    b.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        help="memory budget for auto and pieces, e.g. 4G [half the free RAM]",
    )
    b.add_argument("--max-memory-gb", type=positive_float, default=None, help=argparse.SUPPRESS)
    b.add_argument(
        "--train-on",
        type=positive_int,
        default=None,
        metavar="N",
        help="train the coarse quantizer / codes on N sampled vectors [max(40 x cells, 10000)]",
    )
    b.add_argument(
        "--pieces",
        type=positive_int,
        default=1,
        help="fill the index as N pieces from one trained quantizer, then merge (IVF kinds) [1]",
    )
    b.add_argument(
        "--on-disk",
        action="store_true",
        help="with --pieces: keep the merged inverted lists in OUT/index.ivfdata, memory-mapped "
        "(IVF kinds; no step holds all vectors in memory)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace whatever is at OUT (once the index is complete)")
    b.add_argument("--no-verify", dest="verify", action="store_false", help=NO_VERIFY)
    b.set_defaults(func=run_build)
    a = actions.add_parser(
        "add",
        help="add the embeddings of EMB_DIR (same model) to the index IDX, in place",
        description="Grow a saved index: the vectors of EMB_DIR get the next ids and bring their "
        "metadata. Refused if EMB_DIR was embedded by another model than the index's, "
        "or if the index already holds its embeddings (built from or added before).",
    )
    a.add_argument("index", metavar="IDX", help="index folder from `clipkit index build`")
    a.add_argument("emb_dir", metavar="EMB_DIR", help="folder written by `clipkit embed` with the index's model")
    a.add_argument("--modality", choices=("img", "text"), default=None, help="which embeddings [img when present]")
    a.add_argument("--no-verify", dest="verify", action="store_false", help=NO_VERIFY)
    a.set_defaults(func=run_add)
    p.set_defaults(func=lambda args: p.print_help() or 2)


PIECES = "clipkit-index-pieces"  # the marker of --on-disk's work folder .OUT.pieces


def _claim_workdir(args):
    """The work folder of --on-disk beside OUT: new, or one a killed build left (ours); never a user's folder."""
    from pathlib import Path

    from clipkit.io import OutputError, claim_output

    workdir = Path(args.out).parent / f".{Path(args.out).name}.pieces"
    try:
        return claim_output(workdir, PIECES, [args.emb_dir])
    except OutputError:
        raise OutputError(
            f"{str(workdir)!r} exists and clipkit did not make it; `clipkit index build --on-disk` "
            f"works in that folder and removes it after: move it away or choose another OUT"
        ) from None


def run_build(args) -> int:
    from clipkit.io import check_output_path
    from clipkit.retrieval.embeddings.reader import EmbeddingFolder
    from clipkit.retrieval.index.core import FORMAT, EmbeddingIndex

    check_output_path(args.out, FORMAT, [args.emb_dir], args.overwrite, staged=True)  # before hours of work
    if args.on_disk and args.pieces < 2:
        raise ValueError("--on-disk builds in pieces: pass --pieces N (N >= 2)")
    workdir = _claim_workdir(args) if args.on_disk else None
    try:
        folder = EmbeddingFolder(args.emb_dir, verify=args.verify)
        budget = args.max_memory or (int(args.max_memory_gb * 2**30) if args.max_memory_gb else None)
        options = dict(
            kind=args.kind,
            metric=args.metric,
            recall_target=args.recall,
            max_memory=budget,
            modality=args.modality,
            train_size=args.train_on,
            progress=True,
        )
        if args.pieces > 1:
            from clipkit.retrieval.index.pieces import build_in_pieces

            index = build_in_pieces(folder, pieces=args.pieces, on_disk=workdir, **options)
        else:
            index = EmbeddingIndex.build(folder, **options)
        index.save(args.out, overwrite=args.overwrite, inputs=[args.emb_dir])
    finally:
        if workdir is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)  # ours: claimed above (never a user's folder)
    print(f"{index!r} built in {index.manifest['build_seconds']} s; saved to {args.out}")
    return 0


def run_add(args) -> int:
    from clipkit.io import output_lock
    from clipkit.retrieval.embeddings.reader import EmbeddingFolder
    from clipkit.retrieval.index.core import EmbeddingIndex

    with output_lock(args.index):  # load, add and save as one step: no concurrent add is lost
        index = EmbeddingIndex.load(args.index, verify=args.verify)
        before = len(index)
        added = index.add(EmbeddingFolder(args.emb_dir, verify=args.verify), modality=args.modality)
        index.save(args.index, inputs=[args.emb_dir])
    print(f"added {added} vectors to {args.index}: {before} -> {len(index)}")
    return 0
