"""The `clipkit` command (also `python -m clipkit`).

Each subcommand lives in clipkit/cli/commands/<module>.py with two functions:
`register(subparsers)` adds its parser and sets `func`, and the `func` does
the work, importing heavy libraries only when it runs: building the parser
(`clipkit --help`) imports no torch (tests/test_layout.py checks it).
The scripts in training/, retrieval/ and decoder/ call the same functions.

Error policy (one place, `main` and `user_error`): a user-caused failure prints
one line naming the file and the fix and exits 2. The classes: any
clipkit.io.errors.UserError raised at its source (an output that may not be
written, a busy output, a damaged or pickled weights file, weights of another
model, a bad or bomb image, a non-finite loss), a bad value (ValueError /
TypeError), an OS error with an errno (full / read-only disk, permissions,
a missing file: `_OS_FIXES` says what to do), and a FAISS refusal. Ctrl-C
exits 130 with the command's own resume hint (`interrupted_hint`, set by the
command's parser); anything else is a bug and prints its traceback (exit 1).
CLIPKIT_DEBUG=1 prints the traceback of user errors too.
Float options use `finite_float` & co. (clipkit/cli/types.py), so nan / inf never get past parsing.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from importlib import import_module

from clipkit.io.errors import UserError

# Order here is the order in `clipkit --help`.
COMMAND_MODULES = (
    "shapes",
    "icons",
    "judge",
    "demo",
    "fit",
    "train",
    "embed",
    "index",
    "search",
    "zeroshot",
    "eval",
    "export_benchmark",
    "interpolate",
    "arith",
    "spiral",
    "genlab",
    "unclip",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    from clipkit import __version__

    parser = argparse.ArgumentParser(
        prog="clipkit",
        description="CLIP embedding spaces end to end: shapes data, training, embedding, "
        "FAISS retrieval, zero-shot, embedding arithmetic and unCLIP generation.",
    )
    parser.add_argument("--version", action="version", version=f"clipkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(f"clipkit.cli.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted_hint", None)
        print(
            f"clipkit {args.command}: interrupted; outputs are as they were" + (f" ({hint})" if hint else ""),
            file=sys.stderr,
        )
        code = 130
    except Exception as e:  # the one error policy: a user's mistake is one line, a bug a traceback
        message = user_error(e)
        if message is None or os.environ.get("CLIPKIT_DEBUG"):
            traceback.print_exc()
        if message is None:
            code = 1
        else:
            if os.environ.get("RANK", "0") == "0":  # launched ranks raise the same error; rank 0 says it once
                print(f"clipkit {args.command}: error: {message}", file=sys.stderr)
            code = 2
    return _leave(code)


# errno -> what to do about it (the path is named before it)
_OS_FIXES = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere (a previous output is intact)",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere (a previous output is intact)",
    errno.EROFS: "read-only file system; choose a writable location",
    errno.EACCES: "permission denied; choose a location you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a location you may write to, or fix its permissions",
    errno.EEXIST: "already exists; remove it or choose another path",
    errno.EBUSY: "busy (in use by another process or a mount point); retry when it is free or choose another path",
    errno.ETXTBSY: "busy (in use by another process); retry when it is free or choose another path",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder where a file was expected; choose a file path",
    errno.ENOENT: "does not exist; check the path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise `ulimit -n` or use fewer workers",
}


def user_error(e: BaseException) -> str | None:
    """One line (naming the file and the fix) for an error the user caused, or None for a bug."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno is not None:
        where = e.filename if e.filename is not None else "?"
        fix = _OS_FIXES.get(e.errno)
        return f"{where}: {fix}" if fix else f"{where}: {e.strerror or e}"
    if isinstance(e, (ValueError, TypeError, OSError, ConnectionError)):
        return str(e)  # ours name the value and the fix; JSON / Arrow errors are ValueErrors too
    if type(e).__name__ == "RuntimeError" and ("faiss" in str(e) or str(e).startswith("Error in")):
        detail = next((line for line in str(e).splitlines() if "Error" in line and "'" in line), str(e).splitlines()[0])
        return (
            f"FAISS refused: {detail.strip()}; check the index files and the vectors "
            f"(CLIPKIT_DEBUG=1 shows the traceback)"
        )
    return None


def _leave(code: int) -> int:
    """Return `code`; a torchrun / accelerate rank leaves with os._exit (see clipkit.train.runtime.exit_cleanly)."""
    if "torch" in sys.modules and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from clipkit.train.runtime import exit_cleanly

        exit_cleanly(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
