"""Sinusoidal time embedding (Transformer / DDPM style) for denoisers of any shape."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1.0) -> torch.Tensor:
    """(B,) times -> (B, dim) [cos | sin] features with periods from 2*pi to max_period.

    Discrete samplers give integer timesteps 0..N-1 (use scale=1); flow matching gives sigma in
    [0, 1] (use scale=1000 so both see the same frequencies).
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"embedding dim must be an even int >= 2, got {dim!r}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().reshape(-1, 1) * scale * freqs  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
