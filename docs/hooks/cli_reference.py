"""MkDocs hook: the command-line reference page, generated from the parser at build time.

The page `reference/cli.md` does not exist in the source tree: `on_files` writes it
from `clipkit.cli.build_parser()` on every build, so it cannot drift from the
commands. Each command (and each action of `clipkit index` / `clipkit judge`) gets
a section holding its `--help` text, formatted at a fixed width.

    python docs/hooks/cli_reference.py        # print the page (what the build writes)
"""

from __future__ import annotations

import argparse
import os

PAGE = "reference/cli.md"
WIDTH = 100  # help text width, fixed so the page does not depend on the terminal that built it


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of `parser`, in the order of its --help."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        return parser.format_help().rstrip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _text(summary: str) -> str:
    """A help string as Markdown text: `*` and `|` are the parser's, not emphasis or table cells."""
    return summary.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")


def _anchor(prog: str) -> str:
    return prog.replace(" ", "-")


def cli_reference() -> str:
    """The Markdown of the command-line reference."""
    from clipkit.cli import build_parser

    root = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `clipkit` parser (`clipkit.cli.build_parser`) each time this site is built, "
        "so it is the `--help` of the installed version. Every command also answers `--help` itself.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    sections: list[str] = []

    def walk(parser: argparse.ArgumentParser, depth: int) -> None:
        for _name, summary, sub in _subcommands(parser):
            prog = sub.prog
            if depth == 0:
                lines.append(f"| [`{prog}`](#{_anchor(prog)}) | {_text(summary)} |")
            heading = "#" * (2 + depth)
            sentence = _text(f"{summary[:1].upper()}{summary[1:]}.") if summary else ""
            sections.extend(
                [f"{heading} `{prog}` {{ #{_anchor(prog)} }}", "", sentence, "", "```text", _help(sub), "```", ""]
            )
            walk(sub, depth + 1)

    walk(root, 0)
    lines += ["", "## `clipkit` { #clipkit }", "", "```text", _help(root), "```", ""]
    return "\n".join(lines + sections) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=cli_reference()))
    return files


if __name__ == "__main__":
    print(cli_reference())
