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

import torch

from clipkit.diffusion.base import ClipSpec, Sampler, randn_like_gen, spaced_timesteps
from clipkit.diffusion.schedule import NoiseSchedule, check_prediction_type

VARIANCE_TYPES = ("fixed_small", "fixed_large", "zero")


class DDPMSampler(Sampler):
    """Ancestral DDPM sampler.

    schedule: a NoiseSchedule or its kind ("linear", "cosine", ...); the model must have been
    trained on the same one. prediction_type: "epsilon" | "sample" | "v".
    The model's time input is the integer training timestep (long tensor, 0..N-1).
    """

    def __init__(self, schedule: NoiseSchedule | str = "linear", prediction_type: str = "epsilon",
                 variance_type: str = "fixed_small", timestep_spacing: str = "leading",
                 clip_x0: ClipSpec = None):
        super().__init__(clip_x0)
        self.schedule = NoiseSchedule(schedule) if isinstance(schedule, str) else schedule
        self.prediction_type = check_prediction_type(prediction_type)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")
        self.variance_type = variance_type
        self.timestep_spacing = timestep_spacing
        self.set_timesteps(self.schedule.num_train_timesteps)

    def set_timesteps(self, n: int) -> None:
        """Use n of the N training timesteps (all of them for the classic sampler)."""
        ts = spaced_timesteps(self.schedule.num_train_timesteps, n, self.timestep_spacing)
        abar = self.schedule.alphas_cumprod.tolist()
        # Per-step coefficients as Python floats: the step then costs a few tensor ops.
        self._coefs = []
        for i, t in enumerate(ts):
            a_t = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
            beta = 1.0 - a_t / a_prev                     # the (strided) forward step's variance
            c0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
            ct = math.sqrt(a_t / a_prev) * (1.0 - a_prev) / (1.0 - a_t)
            if i + 1 == len(ts) or self.variance_type == "zero":
                std = 0.0                                 # the last step returns the mean: no noise on x0
            elif self.variance_type == "fixed_small":
                std = math.sqrt(max((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20))
            else:
                std = math.sqrt(beta)
            self._coefs.append((math.sqrt(a_t), math.sqrt(1.0 - a_t), c0, ct, std))
        self.timesteps = torch.tensor(ts, dtype=torch.long)
        self.num_inference_steps = len(ts)
        self._position = {t: i for i, t in enumerate(ts)}

    def predict_x0(self, model_output, t, x):
        a, s = self._coefs[self._index(t)][:2]
        return _x0_from_output(model_output, x, a, s, self.prediction_type)

    def mean_std(self, model_output: torch.Tensor, t, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The posterior mean of x_{t'} and its std: the step is mean + std * noise."""
        a, s, c0, ct, std = self._coefs[self._index(t)]
        x0 = _x0_from_output(model_output, x, a, s, self.prediction_type)
        if self._x0_transform is not None:
            x0 = self._x0_transform(x0)
        return c0 * x0 + ct * x, std

    def step(self, model_output: torch.Tensor, t, x: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        if self.prediction_type == "epsilon" and self._x0_transform is None:
            # Fast path (the common case): the mean folded into two fused ops,
            # c0 * (x - s eps) / a + ct * x = (c0 / a + ct) x - (c0 s / a) eps.
            a, s, c0, ct, std = self._coefs[self._index(t)]
            if model_output.shape != x.shape:
                raise ValueError(f"model output shape {tuple(model_output.shape)} differs from sample shape "
                                 f"{tuple(x.shape)}")
            mean = torch.add(x * (c0 / a + ct), model_output, alpha=-c0 * s / a)
        else:
            mean, std = self.mean_std(model_output, t, x)
        if std == 0.0:
            return mean
        return torch.add(mean, randn_like_gen(x, generator), alpha=std)

    def __repr__(self) -> str:
        return (f"DDPMSampler({self.schedule!r}, prediction_type={self.prediction_type!r}, "
                f"variance_type={self.variance_type!r}, steps={self.num_inference_steps})")


def _x0_from_output(out: torch.Tensor, x: torch.Tensor, a: float, s: float, prediction_type: str) -> torch.Tensor:
    # Same algebra as NoiseSchedule.predict_x0_eps, with scalar coefficients.
    if out.shape != x.shape:
        raise ValueError(f"model output shape {tuple(out.shape)} differs from sample shape {tuple(x.shape)}")
    if prediction_type == "epsilon":
        return (x - s * out) / a
    if prediction_type == "sample":
        return out
    return a * x - s * out


def _eps_from_x0(x0: torch.Tensor, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
    return (x - a * x0) / s
