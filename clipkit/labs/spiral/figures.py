"""The spiral lab's pictures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: nothing here touches matplotlib's global backend or figure
registry, so the lab can run inside a notebook or a test without side effects.
Every function takes plain tensors and writes one PNG atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipkit.io.figures import save_figure
from clipkit.labs.spiral.spiral import CLASSES, spiral_curve

CLASS_COLOURS = ("#1f77b4", "#2ca02c", "#d62728")  # person, dog, cat
MODEL_COLOUR, NOISE_COLOUR = "#1f77b4", "#ff7f0e"
LIMIT = 2.0  # plots show [-2, 2]^2


def _figure(ncols: int, nrows: int = 1, size: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols, size * nrows + 0.4), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _spiral(ax, coloured: bool = False, colour: str = "0.75", lw: float = 1.5) -> None:
    pts, u = spiral_curve(1000)
    if not coloured:
        ax.plot(pts[:, 0], pts[:, 1], color=colour, lw=lw, zorder=0)
        return
    for k, c in enumerate(CLASS_COLOURS):
        sel = (u >= k / 3) & (u <= (k + 1) / 3)
        ax.plot(pts[sel, 0], pts[sel, 1], color=c, lw=6, alpha=0.18, zorder=0, solid_capstyle="butt")


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def vector_field_figure(path: Path, grid: torch.Tensor, fields: list[tuple[float, torch.Tensor, float]]) -> Path:
    """fields: (t in [0, 1], vectors (G, 2) at the grid points, fraction pointing spiral-wards)."""
    fig, axes = _figure(len(fields))
    for ax, (t, v, frac) in zip(axes, fields):
        _spiral(ax)
        u = _unit(v)
        ax.quiver(
            grid[:, 0],
            grid[:, 1],
            u[:, 0],
            u[:, 1],
            color="#333333",
            angles="xy",
            scale_units="xy",
            scale=6.0,
            width=0.006,
        )
        ax.set_title(f"t = {t:.2f}  ({frac:.0%} towards spiral)", fontsize=9)
    fig.suptitle(
        "The learned field (-epsilon): towards the centre at high noise, towards the spiral at low noise", fontsize=10
    )
    return save_figure(fig, path, dpi=None, tight=True)


def trajectory_figure(path: Path, means: torch.Tensor, states: torch.Tensor, final_cloud: torch.Tensor) -> Path:
    """states: (S+1, 2) one DDPM path; means: (S, 2) where each model step led before its noise step."""
    from matplotlib.collections import LineCollection

    fig, axes = _figure(1, size=6.0)
    ax = axes[0]
    _spiral(ax)
    ax.scatter(final_cloud[:, 0], final_cloud[:, 1], s=3, color="0.6", alpha=0.5, zorder=1)
    model_segs = torch.stack([states[:-1], means], dim=1)  # (S, 2, 2): x_t -> mean
    noise_segs = torch.stack([means, states[1:]], dim=1)  # (S, 2, 2): mean -> x_{t-1}
    ax.add_collection(
        LineCollection(
            list(noise_segs.numpy()), colors=NOISE_COLOUR, linewidths=0.8, alpha=0.8, label="noise step", zorder=2
        )
    )
    ax.add_collection(
        LineCollection(list(model_segs.numpy()), colors=MODEL_COLOUR, linewidths=2.0, label="model step", zorder=3)
    )
    ax.scatter(*states[0], s=40, marker="o", color="black", zorder=4, label="start (pure noise)")
    ax.scatter(*states[-1], s=80, marker="*", color="gold", edgecolor="black", zorder=5, label="end")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"One DDPM trajectory, {len(means)} steps: model steps vs noise steps", fontsize=10)
    return save_figure(fig, path, dpi=None, tight=True)


def clouds_figure(path: Path, clouds: list[tuple[str, torch.Tensor, dict]]) -> Path:
    fig, axes = _figure(len(clouds))
    for ax, (title, x, m) in zip(axes, clouds):
        _spiral(ax)
        ax.scatter(x[:, 0].clamp(-LIMIT, LIMIT), x[:, 1].clamp(-LIMIT, LIMIT), s=4, color="black", zorder=2)
        ax.set_title(f"{title}\ndist {m['distance']:.3f}  cover {m['coverage']:.0%}", fontsize=9)
    fig.suptitle(f"{len(clouds[0][1])} samples per sampler (grey: the spiral)", fontsize=10)
    return save_figure(fig, path, dpi=None, tight=True)


def guidance_figure(path: Path, runs: list[tuple[float, torch.Tensor, torch.Tensor, dict]]) -> Path:
    """runs: (guidance scale, samples (N, 2), requested class (N,), metrics)."""
    fig, axes = _figure(len(runs))
    for ax, (scale, x, req, m) in zip(axes, runs):
        _spiral(ax, coloured=True)
        for k, name in enumerate(CLASSES):
            sel = req == k
            ax.scatter(
                x[sel, 0].clamp(-LIMIT, LIMIT),
                x[sel, 1].clamp(-LIMIT, LIMIT),
                s=5,
                color=CLASS_COLOURS[k],
                label=name,
                zorder=2,
            )
        label = "no guidance" if scale == 1 else f"guidance {scale:g}"
        ax.set_title(f"{label}: on requested arm {m['arm_fraction']:.0%}\ndist {m['distance']:.3f}", fontsize=9)
    axes[0].legend(loc="lower right", fontsize=7, markerscale=2)
    fig.suptitle("Class-conditional samples (colour = class asked for; bands = where that class lives)", fontsize=10)
    return save_figure(fig, path, dpi=None, tight=True)


def cfg_field_figure(
    path: Path, grid: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor, t: float, class_name: str
) -> Path:
    fig, axes = _figure(1, size=6.0)
    ax = axes[0]
    ax.set_facecolor("#1e1e1e")
    _spiral(ax, colour="0.45", lw=2)
    pts, u = spiral_curve(1000)
    k = CLASSES.index(class_name)
    sel = (u >= k / 3) & (u <= (k + 1) / 3)
    ax.plot(pts[sel, 0], pts[sel, 1], color="#ffd700", lw=3, alpha=0.35, zorder=0)
    uu, uc = _unit(v_uncond), _unit(v_cond)
    ax.quiver(
        grid[:, 0],
        grid[:, 1],
        uu[:, 0],
        uu[:, 1],
        color="0.7",
        angles="xy",
        scale_units="xy",
        scale=5.0,
        width=0.004,
        label="unconditional",
    )
    ax.quiver(
        grid[:, 0],
        grid[:, 1],
        uc[:, 0],
        uc[:, 1],
        color="#ffd700",
        angles="xy",
        scale_units="xy",
        scale=5.0,
        width=0.004,
        label=f"conditional: {class_name}",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Vector fields at t = {t:.2f}: conditional (yellow) vs unconditional (grey)", fontsize=10)
    return save_figure(fig, path, dpi=None, tight=True)
