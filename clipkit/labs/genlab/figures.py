"""The lab's pictures, through matplotlib's object API (no pyplot) and clipkit.images.make_grid.

quality_figure(png, rows, reference)     agreement / Frechet / sharpness vs network evaluations per image
samples_figure(png, strips, prompts)     one row per method: a sample per prompt, same prompts for all
training_figure(png, curves)             loss against training seconds, one line per model
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipkit.io.figures import save_figure

if TYPE_CHECKING:
    from PIL import Image

_STYLE = {
    "one-shot": ("tab:red", "*"),
    "AR raster": ("tab:purple", "s"),
    "AR spread": ("tab:pink", "D"),
    "DDIM": ("tab:blue", "o"),
    "flow": ("tab:green", "^"),
    "DDPM": ("tab:cyan", "v"),
    "DDIM, noise target": ("tab:gray", "o"),
}


def quality_figure(png, rows: list[dict], reference: dict) -> Path:
    """rows: {"curve", "label", "evaluations", "agreement", "frechet_ratio", "sharpness"} per method;
    reference: {"agreement", "frechet_ratio"} of real renders (dashed lines)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.4))
    axes = fig.subplots(1, 3)
    panels = (
        ("agreement", "judge agreement with the prompt (higher is better)", False),
        ("frechet_ratio", "Frechet distance / real-vs-real floor (lower is better)", True),
        ("sharpness", "judge sharpness (1 = real renders)", False),
    )
    curves = list(dict.fromkeys(r["curve"] for r in rows))
    for ax, (key, title, logy) in zip(axes, panels):
        for curve in curves:
            pts = sorted((r["evaluations"], r[key], r["label"]) for r in rows if r["curve"] == curve)
            color, marker = _STYLE.get(curve, (None, "o"))
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker=marker, color=color, label=curve, markersize=8 if marker == "*" else 5)
            if curve.startswith("AR"):
                for x, y, label in pts:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
        if key in reference:
            ax.axhline(reference[key], color="black", ls="--", lw=0.8, label="real renders")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("network evaluations per image")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png)


def samples_figure(png, strips: list[tuple[str, Image.Image]], prompts: list[str]) -> Path:
    """strips: (method name, a make_grid row of one sample per prompt); prompts: the column titles."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.1 * len(prompts) + 1.6, 0.95 * len(strips) + 1.4))
    axes = fig.subplots(len(strips), 1, squeeze=False)[:, 0]
    for i, (ax, (name, strip)) in enumerate(zip(axes, strips)):
        ax.imshow(np.asarray(strip), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        if i == 0:
            width = strip.width / len(prompts)
            ax.set_xticks([width * (j + 0.5) for j in range(len(prompts))])
            ax.set_xticklabels([textwrap.fill(p, 16) for p in prompts], fontsize=6)
            ax.xaxis.tick_top()
    fig.subplots_adjust(left=0.16, right=0.99, top=1 - 1.0 / fig.get_figheight(), bottom=0.01, hspace=0.08)
    return save_figure(fig, png)


def training_figure(png, curves: dict[str, list[tuple[float, float]]]) -> Path:
    """curves: model name -> [(training seconds, loss)]; each model's loss is on its own scale (log y)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for name, pts in curves.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("training loss (each model its own objective)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png)
