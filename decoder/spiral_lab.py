"""The spiral lab as a script: the same code as `clipkit spiral`.

python decoder/spiral_lab.py --out runs/spiral [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from clipkit.cli.commands import spiral

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    spiral.register(sub)
    args = parser.parse_args(["spiral", *(sys.argv[1:] if argv is None else argv)])
    return spiral.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
