"""A self-contained HTML report: sections of prose, figures (relative PNG paths) and metric tables.

    write_report(out_dir / "report.html", "clipkit demo", [
        Section("Training", "The CLIP learns the shapes world ...",
                figures=[Figure("clip/curves.png", "Loss and zero-shot accuracy per step.")],
                metrics={"val shape accuracy": 0.99}),
    ])

Figures are referenced relative to the report, so the output folder can be
moved or zipped as a whole and still opens in any browser.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from clipkit.io.files import atomic_file

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; max-width: 520px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
.summary { background: #f6f8fa; padding: .8em 1em; border-radius: 6px; }
code { background: #f3f3f3; padding: 0 .25em; }
"""


@dataclass
class Figure:
    path: str  # relative to the report's folder
    caption: str
    width: int | None = None


@dataclass
class Section:
    title: str
    text: str
    figures: list[Figure] = field(default_factory=list)
    metrics: dict | None = None  # name -> value, shown as a two-column table
    table: list[dict] | None = None  # rows with the same keys, shown as a table


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(title: str, sections: list[Section], summary: str | None = None) -> str:
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    if summary:
        parts.append(f"<div class='summary'>{summary}</div>")
    parts.append(
        "<ul>"
        + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
        + "</ul>"
    )
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2><p>{s.text}</p>")
        if s.metrics:
            parts.append(_table([{"measure": k, "value": v} for k, v in s.metrics.items()]))
        if s.table:
            parts.append(_table(s.table))
        for f in s.figures:
            width = f" width='{f.width}'" if f.width else ""
            parts.append(
                f"<figure><img src='{html.escape(f.path)}' alt='{html.escape(f.caption)}'{width}>"
                f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(path: str | os.PathLike, title: str, sections: list[Section], summary: str | None = None) -> Path:
    """Write the report atomically; every figure must exist (a broken picture is a bug, not a warning)."""
    path = Path(path)
    missing = [f.path for s in sections for f in s.figures if not (path.parent / f.path).is_file()]
    if missing:
        raise FileNotFoundError(f"report figures missing under {str(path.parent)!r}: {missing}")
    with atomic_file(path, "w") as fh:
        fh.write(render_html(title, sections, summary))
    return path
