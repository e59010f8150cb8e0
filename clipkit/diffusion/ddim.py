"""DDIM (Song et al. 2021): jump between any two timesteps through the x0 / noise estimates.

    x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps_hat + sigma z
    sigma  = eta * sqrt((1 - abar_t') / (1 - abar_t)) * sqrt(1 - abar_t / abar_t')

eta = 0 is deterministic (the probability-flow ODE, discretised); eta = 1 is
strided DDPM with the posterior variance.

The previous timestep t' is always the next entry of `self.timesteps`.
diffusers' DDIMScheduler instead takes t - N // n, which is right only for
"leading" spacing: with "linspace" or "trailing" spacing it lands on a noise
level that the next model call is not told about (diffusers issues #9261,
#11347). tests/test_diffusion.py shows the difference.

When x0 is clipped, eps is recomputed from the clipped x0 so the step stays
on the straight line between them (base.Sampler).
"""

from __future__ import annotations

import math

from clipkit.diffusion.base import ClipSpec, DiscreteSampler
from clipkit.diffusion.schedule import NoiseSchedule


class DDIMSampler(DiscreteSampler):
    """DDIM sampler. The model's time input is the integer training timestep (long, 0..N-1).

    schedule: a NoiseSchedule or its kind; eta: 0 (deterministic) .. 1 (DDPM-like noise);
    timestep_spacing: "leading" | "trailing" | "linspace"; final_alpha_cumprod: abar after the
    last step (1.0 = land on clean data, diffusers' set_alpha_to_one=True); steps_offset as diffusers'.
    """

    _repr_fields = ("schedule", "eta", "prediction_type", "timestep_spacing")

    def __init__(
        self,
        schedule: NoiseSchedule | str = "linear",
        eta: float = 0.0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        clip_x0: ClipSpec = None,
        steps_offset: int = 0,
        final_alpha_cumprod: float = 1.0,
    ):
        super().__init__(schedule, prediction_type, timestep_spacing, clip_x0, steps_offset)
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.eta = float(eta)
        self.final_alpha_cumprod = float(final_alpha_cumprod)

    def _step_coefficients(self, a_t: float, a_prev: float, last: bool) -> tuple[float, float, float]:
        # x_prev = sqrt(abar') x0 + direction * eps + sigma z, with eps = (x - sqrt(abar) x0) / sqrt(1 - abar)
        var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        sigma = self.eta * math.sqrt(max(var, 0.0))
        direction = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0))
        a, s = math.sqrt(a_t), math.sqrt(1.0 - a_t)
        return math.sqrt(a_prev) - direction * a / s, direction / s, sigma
