"""`clipkit search INDEX --text ... | --image PATH -k 10 [--grid out.png]`: nearest neighbours, as a table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_int

    p = sub.add_parser(
        "search",
        help="search an index with a text or an image",
        description="Embed the query with the index's model and print the k nearest items.",
    )
    p.add_argument("index", metavar="INDEX", help="index folder from `clipkit index build`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="text query")
    q.add_argument("--image", help="image query (path)")
    p.add_argument("-k", type=positive_int, default=10, help="number of results (at most the index size) [10]")
    p.add_argument("--model", default=None, help="model directory or preset [the one recorded by `clipkit embed`]")
    p.add_argument("--grid", default=None, help="save the query image and hits as a PNG grid")
    p.add_argument("--mmap", action="store_true", help="memory-map the index instead of loading it")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the sha256 check of the index files (sizes are still checked): for very large "
        "indexes, where hashing costs ~0.7 s per GB [verify]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a --grid file that clipkit did not write")
    p.set_defaults(func=run)


GRID = "clipkit-search-grid"


def print_hits(scores, ids, rows) -> None:
    print(f"{'rank':>4}  {'score':>7}  {'id':>8}  key / caption / path")
    for rank, (s, i, row) in enumerate(zip(scores, ids, rows), 1):
        if i < 0:
            continue
        row = row or {}
        desc = " | ".join(str(row[c]) for c in ("key", "caption", "path") if row.get(c) is not None)
        print(f"{rank:>4}  {s:7.4f}  {i:>8}  {desc[:100]}")


def run(args) -> int:
    from clipkit.images import make_grid, open_image
    from clipkit.io import check_output_path, output_file
    from clipkit.retrieval.index.core import EmbeddingIndex

    if args.grid:  # refused before any work
        check_output_path(args.grid, GRID, [args.index, args.image], args.overwrite, kind="file")
    index = EmbeddingIndex.load(args.index, mmap=args.mmap, verify=args.verify)
    model = index.model(args.model)
    if args.text is not None:
        scores, ids = index.search_text(model, args.text, args.k)
    else:
        scores, ids = index.search_image(model, args.image, args.k)
    rows = index.lookup(ids[0])
    print_hits(scores[0], ids[0], rows)
    if args.grid:
        images = [open_image(args.image)] if args.image else []
        images += [im for im in (index.image(r) for r in rows) if im is not None]
        if not images:
            raise ValueError("no hit images could be found from the metadata paths; no grid written")
        grid = make_grid(images, columns=min(len(images), 11), scale=max(1, 96 // images[0].height))
        with output_file(args.grid, GRID, overwrite=args.overwrite) as f:
            grid.save(f, format="PNG")
        print(f"grid saved to {args.grid}")
    return 0
