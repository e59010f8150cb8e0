"""The `clipkit` command (also `python -m clipkit`).

Each subcommand lives in clipkit/commands/<module>.py with two functions:
`register(subparsers)` adds its parser and sets `func`, and the `func` does
the work, importing heavy libraries only when it runs. (The training commands
build their flags from the training config dataclasses, whose modules import
torch: that is most of the ~3 s `clipkit --help` takes.)
The scripts in training/, retrieval/ and decoder/ call the same functions.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# Order here is the order in `clipkit --help`.
COMMAND_MODULES = (
    "shapes",
    "demo",
    "train",
    "embed",
    "index",
    "search",
    "zeroshot",
    "arith",
    "spiral",
    "unclip",
)


def build_parser() -> argparse.ArgumentParser:
    from clipkit import __version__

    parser = argparse.ArgumentParser(
        prog="clipkit",
        description="CLIP embedding spaces end to end: shapes data, training, embedding, "
                    "FAISS retrieval, zero-shot, embedding arithmetic and unCLIP generation.")
    parser.add_argument("--version", action="version", version=f"clipkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(f"clipkit.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, TypeError, ConnectionError) as e:
        # User errors: one clear line, no traceback.
        print(f"clipkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
