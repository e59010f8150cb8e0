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
on the straight line between them (guided-diffusion's choice; diffusers'
`use_clipped_model_output=True`).
"""

from __future__ import annotations

import math

import torch

from clipkit.diffusion.base import ClipSpec, Sampler, randn_like_gen, spaced_timesteps
from clipkit.diffusion.ddpm import DDPMSampler, _eps_from_x0, _x0_from_output
from clipkit.diffusion.schedule import NoiseSchedule, check_prediction_type


class DDIMSampler(Sampler):
    """DDIM sampler. The model's time input is the integer training timestep (long, 0..N-1).

    schedule: a NoiseSchedule or its kind; eta: 0 (deterministic) .. 1 (DDPM-like noise);
    timestep_spacing: "leading" | "trailing" | "linspace"; final_alpha_cumprod: abar after the
    last step (1.0 = land on clean data, diffusers' set_alpha_to_one=True); steps_offset as diffusers'.
    """

    def __init__(self, schedule: NoiseSchedule | str = "linear", eta: float = 0.0, prediction_type: str = "epsilon",
                 timestep_spacing: str = "leading", clip_x0: ClipSpec = None, steps_offset: int = 0,
                 final_alpha_cumprod: float = 1.0):
        super().__init__(clip_x0)
        self.schedule = NoiseSchedule(schedule) if isinstance(schedule, str) else schedule
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.eta = float(eta)
        self.prediction_type = check_prediction_type(prediction_type)
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.final_alpha_cumprod = float(final_alpha_cumprod)
        self.set_timesteps(min(50, self.schedule.num_train_timesteps))

    def set_timesteps(self, n: int) -> None:
        ts = spaced_timesteps(self.schedule.num_train_timesteps, n, self.timestep_spacing, self.steps_offset)
        abar = self.schedule.alphas_cumprod.tolist()
        self._coefs = []
        for i, t in enumerate(ts):
            a_t = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else self.final_alpha_cumprod
            var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
            sigma = self.eta * math.sqrt(max(var, 0.0))
            direction = math.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0))
            self._coefs.append((math.sqrt(a_t), math.sqrt(1.0 - a_t), math.sqrt(a_prev), direction, sigma))
        self.timesteps = torch.tensor(ts, dtype=torch.long)
        self.num_inference_steps = len(ts)
        self._position = {t: i for i, t in enumerate(ts)}

    # _coefs rows start with (sqrt abar_t, sqrt(1 - abar_t)) as in DDPM, so the x0 estimate is the same code.
    predict_x0 = DDPMSampler.predict_x0

    def step(self, model_output: torch.Tensor, t, x: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        a, s, a_prev_sqrt, direction, sigma = self._coefs[self._index(t)]
        if self.prediction_type == "epsilon" and self._x0_transform is None:
            # Fast path: sqrt(abar') (x - s eps) / a + direction * eps, folded into two fused ops.
            if model_output.shape != x.shape:
                raise ValueError(f"model output shape {tuple(model_output.shape)} differs from sample shape "
                                 f"{tuple(x.shape)}")
            x_prev = torch.add(x * (a_prev_sqrt / a), model_output, alpha=direction - a_prev_sqrt * s / a)
        else:
            x0 = _x0_from_output(model_output, x, a, s, self.prediction_type)
            if self._x0_transform is not None:
                x0 = self._x0_transform(x0)
                eps = _eps_from_x0(x0, x, a, s)
            elif self.prediction_type == "epsilon":
                eps = model_output
            elif self.prediction_type == "sample":
                eps = _eps_from_x0(x0, x, a, s)
            else:                                # v: eps = sqrt(abar) v + sqrt(1 - abar) x
                eps = a * model_output + s * x
            x_prev = a_prev_sqrt * x0 + direction * eps
        if sigma > 0.0:
            x_prev = torch.add(x_prev, randn_like_gen(x, generator), alpha=sigma)
        return x_prev

    def __repr__(self) -> str:
        return (f"DDIMSampler({self.schedule!r}, eta={self.eta}, prediction_type={self.prediction_type!r}, "
                f"timestep_spacing={self.timestep_spacing!r}, steps={self.num_inference_steps})")
