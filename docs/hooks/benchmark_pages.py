"""MkDocs hook: benchmark pages rendered from the result files in benchmarks/results/ at build time.

Every side-by-side benchmark writes benchmarks/results/NAME.json (the command that
ran, the machine, the date and its numbers) and NAME.md (its table), through
benchmarks/protocol.py `write_results`. A page under docs/benchmarks/ marks where
its results go with a line

    <!-- results: NAME [NAME ...] -->

(a name may be a glob, e.g. `index_curve_*`); the overview page holds
`<!-- results-index -->`. At build time the hook replaces each marker with what the
folder holds: per result file the command, machine and date, its table, and a link
to the raw JSON (copied into the site); for a name with no file, a note saying so
and pointing at the page's "Produce it" section, which gives the command. Nothing
here is typed by hand, so a page cannot quote a number its file does not hold.

    python docs/hooks/benchmark_pages.py train-fp32 'index_curve_*'   # print what a marker renders
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!--\s*results:\s*(?P<names>[^>]*?)\s*-->\s*$", re.MULTILINE)
INDEX_MARKER = re.compile(r"^<!--\s*results-index\s*-->\s*$", re.MULTILINE)
SITE_FOLDER = "benchmarks/results"  # where the raw JSON files land in the site
_state: dict = {"results": Path("benchmarks/results"), "pages": {}}


def result_files(results_dir: Path) -> dict[str, Path]:
    """{name: path} of every NAME.json in the folder (none when it does not exist)."""
    if not results_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(results_dir.glob("*.json")) if not p.name.startswith(".")}


def read_result(path: Path) -> dict:
    """A result file's JSON object; a file that is not one is reported on the page rather than hidden."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {"error": f"cannot read {path.name}: {e}"}
    return data if isinstance(data, dict) else {"error": f"{path.name} holds a {type(data).__name__}, not an object"}


def machine_line(machine) -> str:
    """'Intel(R) Xeon(R) ..., 2 cores, Python 3.11.7, torch 2.x, commit abc1234' from a result's machine."""
    if not isinstance(machine, dict):
        return str(machine) if machine else "not recorded"
    parts = [str(machine.get("cpu") or "unknown CPU")]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    if machine.get("commit"):
        parts.append(f"commit {machine['commit']}")
    return ", ".join(parts)


def table_of(path: Path) -> str | None:
    """The Markdown table written beside NAME.json (NAME.md), without its provenance comment."""
    md = path.with_suffix(".md")
    if not md.is_file():
        return None
    lines = md.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("<!--"):
        lines = lines[1:]
    return "\n".join(lines).strip() or None


def render_one(name: str, path: Path, link_prefix: str) -> str:
    data = read_result(path)
    if "error" in data and len(data) == 1:
        return f'### `{name}`\n\n!!! warning "Unreadable result file"\n    {data["error"]}\n'
    out = [
        f"### `{name}`",
        "",
        f"- **Command:** `{data.get('command', 'not recorded')}`",
        f"- **Machine:** {machine_line(data.get('machine'))}",
        f"- **Date:** {data.get('date', 'not recorded')}",
        f"- **Raw numbers:** [{path.name}]({link_prefix}{SITE_FOLDER}/{path.name})",
        "",
    ]
    table = table_of(path)
    if table:
        out += [table, ""]
    else:
        text = json.dumps(data.get("results", data), indent=2)
        out += ['??? note "Results (no table was written beside the file)"', "", "    ```json"]
        out += ["    " + line for line in text.splitlines()] + ["    ```", ""]
    return "\n".join(out)


def render_results(patterns: list[str], results_dir: Path, link_prefix: str = "../") -> str:
    """What a `<!-- results: ... -->` marker becomes: every matching file, or how to get one."""
    files = result_files(results_dir)
    blocks = []
    for pattern in patterns:
        names = [n for n in files if fnmatch.fnmatchcase(n, pattern)]
        if not names:
            blocks.append(
                f'!!! note "No result for `{pattern}` in this checkout"\n'
                f"    `benchmarks/results/` holds no `{pattern}.json`. Run the command under "
                f"[Produce it](#produce-it) on the machine you care about: it writes "
                f"`benchmarks/results/{pattern}.json` and `.md`, and the next `make docs` shows them here.\n"
            )
        blocks += [render_one(n, files[n], link_prefix) for n in names]
    return "\n".join(blocks)


def render_index(results_dir: Path, pages: dict[str, str], link_prefix: str = "../") -> str:
    """The overview's table of every result file in the folder, with the page that shows it."""
    files = result_files(results_dir)
    if not files:
        return (
            '!!! note "No result files in this checkout"\n'
            "    `benchmarks/results/` is empty or absent. Each benchmark's page says how to produce its "
            "results; the next `make docs` renders them.\n"
        )
    rows = ["| result | date | machine | command | page |", "|---|---|---|---|---|"]
    for name, path in files.items():
        data = read_result(path)
        page = next((p for pat, p in pages.items() if fnmatch.fnmatchcase(name, pat)), None)
        link = f"[{Path(page).stem}]({Path(page).name})" if page else "—"
        command = str(data.get("command", "")).replace("|", "\\|")
        rows.append(
            f"| [{name}]({link_prefix}{SITE_FOLDER}/{path.name}) | {data.get('date', '')} | "
            f"{machine_line(data.get('machine'))} | `{command}` | {link} |"
        )
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- MkDocs events


def on_config(config):
    _state["results"] = Path(config.config_file_path).resolve().parent / "benchmarks" / "results"
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    # which page shows which results (for the overview's links), read from the markers
    _state["pages"] = {}
    for f in files.documentation_pages():
        if f.src_uri.startswith("benchmarks/") and f.abs_src_path:
            for m in MARKER.finditer(Path(f.abs_src_path).read_text(encoding="utf-8")):
                for pattern in m.group("names").split():
                    _state["pages"][pattern] = f.src_uri
    for path in result_files(_state["results"]).values():
        files.append(File.generated(config, f"{SITE_FOLDER}/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if not page.file.src_uri.startswith("benchmarks/"):
        return markdown
    prefix = "../" * page.file.src_uri.count("/")
    markdown = MARKER.sub(lambda m: render_results(m.group("names").split(), _state["results"], prefix), markdown)
    return INDEX_MARKER.sub(lambda m: render_index(_state["results"], _state["pages"], prefix), markdown)


if __name__ == "__main__":
    print(render_results(sys.argv[1:] or ["*"], Path(__file__).resolve().parents[2] / "benchmarks" / "results"))
