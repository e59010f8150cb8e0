"""`clipkit arith EXPR --words 5 [--search INDEX]`: embedding arithmetic, nearest words and images."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import nonnegative_int, positive_int

    p = sub.add_parser(
        "arith",
        help='evaluate embedding arithmetic: img:"a.png" - img:"b.png" + text:"hat"',
        description='Evaluate an expression over CLIP embeddings (img:"path", text:"...", '
        "numbers, + - *, parentheses, normalize(...), mean(...)) and show the "
        "nearest vocabulary words and, with --search, the nearest indexed items.",
    )
    p.add_argument("expression", metavar="EXPR")
    p.add_argument("--model", default=None, help="model directory or preset [the --search index's model]")
    p.add_argument("--words", type=nonnegative_int, default=5, help="how many nearest words to show [5]")
    p.add_argument("--vocabulary", default=None, help="vocabulary file, one word a line [shipped list]")
    p.add_argument("--search", default=None, metavar="INDEX", help="also search this index with the vector")
    p.add_argument("-k", type=positive_int, default=10, help="results from --search [10]")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the sha256 check of the --search index files (sizes are still checked) [verify]",
    )
    p.add_argument("--save", default=None, help="save the vector to this .npy file")
    p.add_argument("--overwrite", action="store_true", help="replace a --save file that clipkit did not write")
    p.set_defaults(func=run)


VECTOR = "clipkit-vector"


def _save_path(args):
    """--save, claimed before any work (the path as given: nothing added to it); None without --save."""
    import re

    from clipkit.io import check_output_path

    if not args.save:
        return None
    path = args.save
    images = re.findall(r'img:\s*"([^"]*)"', args.expression)  # the expression's own inputs
    check_output_path(path, VECTOR, [args.search, args.vocabulary, *images], args.overwrite, kind="file")
    return path


def run(args) -> int:
    import numpy as np

    from clipkit.cli.commands.search import print_hits
    from clipkit.io import output_file
    from clipkit.retrieval.arithmetic import evaluate_expression, nearest_words

    save = _save_path(args)
    index = None
    if args.search:
        from clipkit.retrieval.index.core import EmbeddingIndex

        index = EmbeddingIndex.load(args.search, verify=args.verify)
        model = index.model(args.model)
    elif args.model:
        from clipkit.model import resolve_model

        model = resolve_model(args.model)
    else:
        raise ValueError("pass --model DIR (or --search INDEX whose manifest records the model)")
    vector = evaluate_expression(model, args.expression)
    print(f"vector: dim {vector.shape[0]}, norm {np.linalg.norm(vector):.4f}")
    if args.words > 0:
        print("nearest words:")
        for word, score in nearest_words(model, vector, args.words, args.vocabulary):
            print(f"  {score:7.4f}  {word}")
    if index is not None:
        index.check_model(model)
        unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
        scores, ids = index.search(unit[None], args.k)
        print_hits(scores[0], ids[0], index.lookup(ids[0]))
    if save:
        with output_file(save, VECTOR, overwrite=args.overwrite) as f:
            np.save(f, vector)
        print(f"saved to {save}")
    return 0
