"""A run folder and what it records: config.json, metrics.jsonl, curves.png, summary.json, checkpoints/.

run = RunDir(config.out_dir, accelerator, config.keep_checkpoints)
run.write_config(config)
run.metrics.log({"step": 10, "loss": 0.42})
run.metrics.plot(run.path / "curves.png", {"loss": ["loss"]})
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from clipkit.config import to_json
from clipkit.io import atomic_file, write_json
from clipkit.io.figures import new_figure, save_figure
from clipkit.train.checkpoint import CheckpointManager


class MetricsLog:
    """Append-only JSONL of metric rows (rank 0 writes; other ranks' calls are no-ops)."""

    def __init__(self, path: str | os.PathLike, accelerator=None):
        self.path = Path(path)
        self.accelerator = accelerator
        self.active = accelerator is None or accelerator.is_main_process

    def log(self, row: dict) -> None:
        row = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numeric, step=int(row.get("step", 0)))

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (written after the checkpoint we resume from) so the curve has no overlap."""
        if not self.active or not self.path.is_file():
            return
        kept = [r for r in self.rows() if int(r.get("step", 0)) <= step]
        with atomic_file(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def plot(self, png: str | os.PathLike, groups: dict[str, list[str]], title: str = "") -> Path | None:
        """One panel per group {panel title: [metric keys]} against step; saved as PNG (rank 0)."""
        if not self.active:
            return None
        return plot_curves(self.rows(), png, groups, title)


def plot_curves(rows: list[dict], png: str | os.PathLike, groups: dict[str, list[str]], title: str = "") -> Path:
    groups = {name: keys for name, keys in groups.items() if any(k in r for r in rows for k in keys)}
    fig = new_figure(figsize=(5 * max(1, len(groups)), 3.6))
    axes = fig.subplots(1, max(1, len(groups)), squeeze=False)
    for ax, (name, keys) in zip(axes[0], groups.items()):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=key, marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, png)


class RunDir:
    """A run folder: config.json, metrics.jsonl, checkpoints/, summary.json."""

    def __init__(self, out_dir: str | os.PathLike, accelerator, keep_checkpoints: int = 2):
        self.path = Path(out_dir)
        self.accelerator = accelerator
        if accelerator.is_main_process:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(self.path / "metrics.jsonl", accelerator)
        self.checkpoints = CheckpointManager(self.path / "checkpoints", keep_checkpoints)

    def write_config(self, config) -> None:
        if self.accelerator.is_main_process:
            write_json(self.path / "config.json", to_json(config))

    def write_summary(self, summary: dict) -> None:
        if self.accelerator.is_main_process:
            write_json(self.path / "summary.json", summary)
