"""DDPM ancestral sampling (Ho et al. 2020): one Gaussian posterior step per timestep.

    x_{t'} ~ N( c0 * x0_hat + ct * x_t ,  var )      t' = the next (smaller) timestep, abar_{-1} = 1
    c0 = sqrt(abar_t') * (1 - abar_t/abar_t') / (1 - abar_t),   ct = sqrt(abar_t/abar_t') * (1 - abar_t') / (1 - abar_t)

The variance is the true posterior's ("fixed_small", beta~) or the forward
step's ("fixed_large", beta). With fewer steps than training timesteps the
same formulas hold between the strided timesteps. "zero" drops the noise step
altogether: an ablation, not a sampler (the spiral lab shows it collapsing
towards the centre of the data).
"""

from __future__ import annotations

import math

from clipkit.diffusion.base import ClipSpec, DiscreteSampler
from clipkit.diffusion.schedule import NoiseSchedule

VARIANCE_TYPES = ("fixed_small", "fixed_large", "zero")


class DDPMSampler(DiscreteSampler):
    """Ancestral DDPM sampler; `set_timesteps(N)` (all training timesteps) is the classic one.

    schedule: a NoiseSchedule or its kind ("linear", "cosine", ...); the model must have been
    trained on the same one. prediction_type: "epsilon" | "sample" | "v".
    The model's time input is the integer training timestep (long tensor, 0..N-1).
    """

    _repr_fields = ("schedule", "prediction_type", "variance_type")

    def __init__(
        self,
        schedule: NoiseSchedule | str = "linear",
        prediction_type: str = "epsilon",
        variance_type: str = "fixed_small",
        timestep_spacing: str = "leading",
        clip_x0: ClipSpec = None,
        steps_offset: int = 0,
    ):
        super().__init__(schedule, prediction_type, timestep_spacing, clip_x0, steps_offset)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")
        self.variance_type = variance_type

    def _step_coefficients(self, a_t: float, a_prev: float, last: bool) -> tuple[float, float, float]:
        beta = 1.0 - a_t / a_prev  # the (strided) forward step's variance
        c0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
        ct = math.sqrt(a_t / a_prev) * (1.0 - a_prev) / (1.0 - a_t)
        if last or self.variance_type == "zero":
            std = 0.0  # the last step returns the mean: no noise on x0
        elif self.variance_type == "fixed_small":
            std = math.sqrt(max((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20))
        else:
            std = math.sqrt(beta)
        return c0, ct, std
