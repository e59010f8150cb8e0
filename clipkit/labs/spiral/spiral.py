"""The 2-D spiral world: data with three classes along the arm, and how samples are scored.

The spiral is r = R * theta / THETA_END for theta in [THETA_START, THETA_END]
(1.5 turns, radius 0.375 .. 1.5, so the data has roughly unit scale like the
noise). Points are drawn uniformly along its length. The arm is cut into three
equal lengths: inner = person, middle = dog, outer = cat.

Metrics (all in data units; the gap between neighbouring turns is 0.75):
  distance  mean distance from each sample to the nearest point of the spiral
  coverage  fraction of the spiral's length with a sample within `radius` (0.1)
  arm       fraction of samples within `on_arm` (0.05) of the arm of the class that was asked for
"""

from __future__ import annotations

import functools
import math

import torch

CLASSES = ("person", "dog", "cat")  # inner, middle, outer third of the arm
THETA_START, THETA_END, RADIUS = math.pi, 4 * math.pi, 1.5
NEAR = 0.1  # "near the spiral": coverage radius (samples ~0.035 apart)
ON_ARM = 0.05  # "landed on the arm": 5x the data's own jitter (0.01)
NULL_CLASS = len(CLASSES)  # index of the "no class" label the models learn for guidance


def _curve(theta: torch.Tensor) -> torch.Tensor:
    r = RADIUS * theta / THETA_END
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)


@functools.lru_cache(maxsize=4)
def spiral_curve(num: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` points evenly spaced along the spiral's length, (num, 2), and their arc position in [0, 1].

    Cached: callers share the tensors and must not modify them.
    """
    theta = torch.linspace(THETA_START, THETA_END, 20 * num, dtype=torch.float64)
    pts = _curve(theta)
    seg = (pts[1:] - pts[:-1]).norm(dim=-1)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    s = s / s[-1]  # arc-length fraction, 0 at the inner end
    u = torch.linspace(0, 1, num, dtype=torch.float64)
    idx = torch.searchsorted(s, u).clamp(1, len(s) - 1)
    w = ((u - s[idx - 1]) / (s[idx] - s[idx - 1])).unsqueeze(-1)
    return ((1 - w) * pts[idx - 1] + w * pts[idx]).float(), u.float()


def arm_of(u: torch.Tensor) -> torch.Tensor:
    """Class index (0 person, 1 dog, 2 cat) of arc positions u in [0, 1]."""
    return (u * len(CLASSES)).long().clamp(max=len(CLASSES) - 1)


def spiral_length() -> float:
    pts, _ = spiral_curve()
    return float((pts[1:] - pts[:-1]).norm(dim=-1).sum())


def sample_spiral(
    n: int, generator: torch.Generator | None = None, jitter: float = 0.01, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n training points (n, 2) uniform along the spiral's length (+ Gaussian jitter) and their classes (n,).

    With `classes` given, each point is drawn from the arm of its class.
    """
    if n < 1:
        raise ValueError(f"number of points must be >= 1, got {n}")
    u = torch.rand(n, generator=generator)
    if classes is not None:
        u = (classes.float() + u) / len(CLASSES)
    # Interpolate between the evenly spaced points of a dense copy of the curve.
    pts, _ = spiral_curve(8000)
    pos = u * (len(pts) - 1)
    i = pos.long().clamp(max=len(pts) - 2)
    w = (pos - i).unsqueeze(-1)
    x = (1 - w) * pts[i] + w * pts[i + 1] + jitter * torch.randn(n, 2, generator=generator)
    return x, arm_of(u)


class SpiralScorer:
    """Scores point clouds against the spiral (a dense polyline of evenly spaced points)."""

    def __init__(self, num: int = 2000, radius: float = NEAR, on_arm: float = ON_ARM):
        self.curve, self.u = spiral_curve(num)  # (M, 2), (M,)
        self.arm = arm_of(self.u)  # (M,)
        self.radius, self.on_arm = radius, on_arm

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance of each point to the spiral (N,) and the index of its nearest curve point (N,)."""
        d = torch.cdist(x.float(), self.curve)  # (N, M)
        return d.min(dim=1)

    def distance(self, x: torch.Tensor) -> float:
        return float(self.nearest(x)[0].mean())

    def coverage(self, x: torch.Tensor) -> float:
        d = torch.cdist(self.curve, x.float())  # (M, N)
        return float((d.min(dim=1).values < self.radius).float().mean())

    def arm_fraction(self, x: torch.Tensor, requested: torch.Tensor) -> float:
        """Fraction of points within `on_arm` of the arm of their requested class."""
        d = torch.cdist(x.float(), self.curve)  # (N, M)
        own = self.arm.unsqueeze(0) == requested.reshape(-1, 1)  # (N, M) curve points on the asked arm
        d_own = torch.where(own, d, torch.full_like(d, float("inf"))).min(dim=1).values
        return float((d_own < self.on_arm).float().mean())

    def score(self, x: torch.Tensor, requested: torch.Tensor | None = None) -> dict:
        out = {"distance": round(self.distance(x), 4), "coverage": round(self.coverage(x), 4)}
        if requested is not None:
            out["arm_fraction"] = round(self.arm_fraction(x, requested), 4)
        return out
