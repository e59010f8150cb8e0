"""Figures as PNG files: matplotlib's object API on the Agg canvas, written atomically.

    from clipkit.io.figures import new_figure, save_figure
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, loss)
    save_figure(fig, "runs/x/curves.png")        # the folder is made; a crash never leaves half a PNG

No pyplot: nothing here touches matplotlib's global backend or figure registry, so
figures can be drawn inside a notebook, a server or a test without side effects.
Every PNG the package writes goes through `save_figure`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clipkit.io.files import atomic_file


def new_figure(**kwargs) -> Figure:
    """A matplotlib Figure on its own Agg canvas (kwargs go to `Figure`: figsize, dpi, layout, ...)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float | None = 110, tight: bool = False) -> Path:
    """Render `fig` to PNG in memory, then write it atomically at `path` (parent folders made)."""
    path = Path(path)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else "figure", bbox_inches="tight" if tight else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        f.write(buf.getvalue())
    return path
