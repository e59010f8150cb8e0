"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023), sampled with Euler steps.

    x_sigma = (1 - sigma) * x0 + sigma * noise,     sigma in [0, 1]  (1 = pure noise)
    the model predicts the velocity  v = noise - x0  (= d x_sigma / d sigma)
    Euler step:  x_{sigma'} = x_sigma + (sigma' - sigma) * v_hat

Time is continuous: the model's time input is sigma itself, a float in
[0, 1] (scale it, e.g. by 1000, inside the model's time embedding if it
expects timestep-sized numbers). `shift` > 1 spends more steps at high
noise (SD3's sigma' = shift*sigma / (1 + (shift-1)*sigma)).

Default grid: n steps on linspace(1, 0, n + 1), i.e. it starts at pure noise
and ends exactly on sigma = 0. diffusers' FlowMatchEulerDiscreteScheduler
uses linspace(1, 1/N, n) followed by 0; pass those `sigmas` to reproduce it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from clipkit.diffusion.base import ClipSpec, Sampler


class FlowMatchSampler(Sampler):
    """Euler sampler for a velocity-predicting flow-matching model."""

    prediction_type = "velocity"

    def __init__(self, shift: float = 1.0, clip_x0: ClipSpec = None):
        super().__init__(clip_x0)
        if not float(shift) > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        self.shift = float(shift)
        self.set_timesteps(16)

    # --- forward process (used by training helpers) -------------------------------------------
    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """x_sigma = (1 - sigma) x0 + sigma noise; sigma a float or a (B,) tensor in [0, 1]."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
        s = _broadcast(sigma, x0)
        return (1 - s) * x0 + s * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity a flow-matching model is trained to output."""
        return noise - x0

    # --- sampling ----------------------------------------------------------------------------
    def set_timesteps(self, n: int | None = None, sigmas: Sequence[float] | None = None) -> None:
        """n Euler steps from sigma = 1 to 0, or the given descending `sigmas` (then 0 is appended).

        `shift` is applied to either grid.
        """
        if sigmas is None:
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"number of sampling steps must be a positive int, got {n!r}")
            grid = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
        else:
            grid = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
            if n is not None and n != len(grid):
                raise ValueError(f"got n={n} but {len(grid)} sigmas")
            if len(grid) == 0 or grid.max() > 1 or grid.min() <= 0 or (grid[1:] >= grid[:-1]).any():
                raise ValueError(f"sigmas must be strictly decreasing values in (0, 1], got {grid.tolist()}")
        grid = self.shift * grid / (1 + (self.shift - 1) * grid)
        # float32 is what the model sees; keep the step sizes in the same precision.
        self.sigmas = torch.cat([grid, grid.new_zeros(1)]).float()      # (n + 1,), ends at 0
        self.timesteps = self.sigmas[:-1].clone()                        # model time = sigma
        self.num_inference_steps = len(self.timesteps)
        values = self.sigmas.tolist()
        self._position = {s: i for i, s in enumerate(values[:-1])}
        self._dsigma = [values[i + 1] - values[i] for i in range(len(values) - 1)]

    def predict_x0(self, model_output, t, x):
        sigma = self.sigmas[self._index(t)].item()
        return x - sigma * model_output

    def step(self, model_output: torch.Tensor, t, x: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One Euler step; deterministic (`generator` is accepted for the shared interface)."""
        i = self._index(t)
        if model_output.shape != x.shape:
            raise ValueError(f"model output shape {tuple(model_output.shape)} differs from sample shape {tuple(x.shape)}")
        if self._x0_transform is not None:
            # Clip x0, keep the noise estimate consistent with x, rebuild the velocity.
            sigma = self.sigmas[i].item()
            x0 = self._x0_transform(x - sigma * model_output)
            noise = (x - (1 - sigma) * x0) / sigma
            model_output = noise - x0
        return torch.add(x, model_output, alpha=self._dsigma[i])

    def __repr__(self) -> str:
        return f"FlowMatchSampler(shift={self.shift}, steps={self.num_inference_steps})"


def _broadcast(sigma, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s
    if s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma has {s.shape[0]} entries but x has batch size {x.shape[0]}")
    return s.reshape(-1, *([1] * (x.ndim - 1)))
