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

`FlowAdapter` samples a model trained on a NoiseSchedule with these Euler steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipkit.diffusion.base import ClipSpec, ModelFn, Sampler, check_steps
from clipkit.diffusion.names import SIGMA_DISTRIBUTIONS, check_prediction_type
from clipkit.diffusion.parameterization import ForwardProcess, from_x0_eps, per_sample, to_x0_eps
from clipkit.diffusion.schedule import NoiseSchedule


class FlowProcess(ForwardProcess):
    """The flow-matching forward process, with NoiseSchedule's interface (sample_t, signal_noise, add_noise,
    target). sigma_distribution: "uniform" or "logit_normal" (SD3, Esser et al. 2024: sigmoid(mean + std z))."""

    default_prediction_type = "velocity"  # the velocity noise - x0; or x0 itself ("sample")
    flow = True

    def __init__(self, sigma_distribution: str = "uniform", mean: float = 0.0, std: float = 1.0):
        if sigma_distribution not in SIGMA_DISTRIBUTIONS:
            raise ValueError(f"unknown sigma distribution {sigma_distribution!r}; choose one of {SIGMA_DISTRIBUTIONS}")
        self.sigma_distribution, self.mean, self.std = sigma_distribution, float(mean), float(std)

    def sample_t(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """(B,) float32 noise levels sigma in (0, 1): the model's time input."""
        if self.sigma_distribution == "uniform":
            s = torch.rand(batch_size, generator=generator)
        else:
            s = torch.sigmoid(self.mean + self.std * torch.randn(batch_size, generator=generator))
        return s.to(device) if device is not None else s

    def signal_noise(self, sigma: float | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - sigma, sigma) broadcastable against x; sigma a float or a (B,) tensor in [0, 1]."""
        s = per_sample(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x, "sigma")
        return 1 - s, s


class FlowMatchSampler(Sampler):
    """Euler sampler for a flow-matching model (prediction_type "velocity", or "sample" for x0)."""

    _repr_fields = ("shift", "prediction_type")

    def __init__(self, shift: float = 1.0, clip_x0: ClipSpec = None, prediction_type: str = "velocity"):
        super().__init__(check_prediction_type(prediction_type, flow=True), clip_x0)
        if not float(shift) > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        self.shift = float(shift)

    def set_timesteps(self, n: int | None = None, sigmas: Sequence[float] | None = None) -> None:
        """n Euler steps from sigma = 1 to 0, or the given descending `sigmas` (then 0 is appended).

        `shift` is applied to either grid.
        """
        if sigmas is None:
            grid = torch.linspace(1.0, 0.0, check_steps(n) + 1, dtype=torch.float64)[:-1]
        else:
            grid = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
            if n is not None and n != len(grid):
                raise ValueError(f"got n={n} but {len(grid)} sigmas")
            if len(grid) == 0 or grid.max() > 1 or grid.min() <= 0 or (grid[1:] >= grid[:-1]).any():
                raise ValueError(f"sigmas must be strictly decreasing values in (0, 1], got {grid.tolist()}")
        grid = self.shift * grid / (1 + (self.shift - 1) * grid)
        # float32 is what the model sees; keep the step sizes in the same precision.
        self.sigmas = torch.cat([grid, grid.new_zeros(1)]).float()  # (n + 1,), ends at 0
        sig = self.sigmas.tolist()
        # Euler: x + (s' - s) (x - x0) / s = (s - s') / s * x0 + s' / s * x  (model time = sigma)
        self._set_grid(
            self.sigmas[:-1].clone(),
            [(1.0 - s, s) for s in sig[:-1]],
            [((s - s2) / s, s2 / s, 0.0) for s, s2 in zip(sig[:-1], sig[1:])],
        )


class FlowAdapter:
    """A model trained on a NoiseSchedule, seen as a flow-matching velocity model (for FlowMatchSampler).

        x = sample(FlowAdapter(model, schedule, "sample"), shape, FlowMatchSampler(), 16, cond=c)

    x_sigma = (1 - sigma) x0 + sigma noise is the schedule's x_t = sqrt(abar) x0 + sqrt(1 - abar) noise
    times r = sqrt((1 - sigma)^2 + sigma^2), at abar = ((1 - sigma) / r)^2 (equal signal-to-noise
    ratio): the model runs on x_sigma / r at the fractional timestep with that abar, and its x0 and
    noise estimates give the velocity.
    """

    def __init__(self, model_fn: ModelFn, schedule: NoiseSchedule, prediction_type: str):
        self.model_fn, self.schedule = model_fn, schedule
        self.prediction_type = check_prediction_type(prediction_type, discrete=True)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        sigma = sigma.to(x.device, torch.float64).clamp(1e-4, 1.0)
        r = torch.sqrt((1 - sigma) ** 2 + sigma**2)
        a, s = (1 - sigma) / r, sigma / r  # the schedule's coefficients
        t = self.schedule.timestep_of(a**2).float()
        view = lambda c: per_sample(c.to(x.dtype), x, "sigma")  # noqa: E731
        xt = x / view(r)
        out = self.model_fn(xt, t, cond)
        a = view(a).clamp_min(1e-4) if self.prediction_type == "epsilon" else view(a)  # no x0 from eps at a = 0
        x0, eps = to_x0_eps(out, xt, a, view(s), self.prediction_type)
        return from_x0_eps(x0, eps, 1 - view(sigma), view(sigma), "velocity")
