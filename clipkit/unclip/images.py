"""Pixels in and out of the unCLIP models: PIL <-> (N, 3, H, W) tensors in [-1, 1], trajectory strips."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clipkit.diffusion.sampling import Trajectory
from clipkit.images import make_grid


def pil_to_tensor(images) -> torch.Tensor:
    """N PIL images of one size -> (N, 3, H, W) float in [-1, 1] (the inverse of to_pil)."""
    images = list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise TypeError("images must be an (N, 3, H, W) tensor in [-1, 1] or a non-empty list of PIL images")
    if len({im.size for im in images}) != 1:
        raise ValueError(f"images have several sizes {sorted({im.size for im in images})}; expected one")
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> N RGB PIL images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def trajectory_strip(trajectory: Trajectory, columns: int = 10, field: str = "x0") -> Image.Image:
    """One row per sample: `columns` evenly spaced denoising steps (x0 estimates or states) as a PNG-ready grid."""

    frames = getattr(trajectory, field)  # (S, N, 3, H, W)
    picks = np.unique(np.linspace(0, len(frames) - 1, columns).round().astype(int))
    images = []
    for i in range(frames.shape[1]):
        images.extend(to_pil(frames[picks, i]))
    return make_grid(images, columns=len(picks), scale=2)
