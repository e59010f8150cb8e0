"""The one place where a model output becomes (x0, noise) estimates and back.

    x0, eps = to_x0_eps(model_output, x_t, a, s, "v")      # invert what the model predicts
    target = from_x0_eps(x0, eps, a, s, "v")                 # what a model should predict

for x_t = a * x0 + s * eps: a = sqrt(abar_t), s = sqrt(1 - abar_t) on a NoiseSchedule, a = 1 - sigma,
s = sigma on a FlowProcess (floats, or tensors broadcasting against x: `signal_noise` of either).
Samplers, training targets and FlowAdapter all go through these two functions.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from clipkit.diffusion.names import check_prediction_type

# x0, eps, model outputs: tensors (or Python floats, as Sampler._set_grid reads coefficients off the helpers);
# a and s: floats or tensors broadcasting against them.
X = TypeVar("X", torch.Tensor, float)


def per_sample(c, x, name: str = "t"):
    """A scalar or (B,) coefficient (a, s, t ...) shaped (B, 1, ...) to broadcast against x (B, ...)."""
    if c.ndim == 0:
        return c
    if c.shape[0] != x.shape[0]:
        raise ValueError(f"{name} has {c.shape[0]} entries but x has batch size {x.shape[0]}")
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def from_x0_eps(x0: X, eps: X, a: X | float, s: X | float, prediction_type: str) -> X:
    """The output of a `prediction_type` model at x_t = a * x0 + s * eps."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v":
        return a * eps - s * x0
    return eps - x0  # velocity


def to_x0_eps(model_output: X, x_t: X, a: X | float, s: X | float, prediction_type: str) -> tuple[X, X]:
    """(x0, eps) such that x_t = a * x0 + s * eps and from_x0_eps(x0, eps, a, s, type) = model_output.

    Divides by a for "epsilon" and by s for "sample": neither estimate exists there
    at a = 0 (pure noise) or s = 0 (clean data).
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    if prediction_type == "v":  # a rotation when a^2 + s^2 = 1
        norm = a * a + s * s
        return (a * x_t - s * model_output) / norm, (s * x_t + a * model_output) / norm
    x0 = (x_t - s * model_output) / (a + s)  # velocity; a + s = 1 on the flow path
    return x0, x0 + model_output


class ForwardProcess:
    """What NoiseSchedule (discrete DDPM timesteps) and FlowProcess (flow-matching sigmas) share.

    A subclass defines `signal_noise(t, x) -> (a, s)` with x_t = a * x0 + s * noise, `sample_t`,
    `default_prediction_type` and `flow` (which prediction types it accepts); noising a batch and
    the training target follow from (a, s) in one place.
    """

    default_prediction_type: str = "epsilon"
    flow: bool = False

    def signal_noise(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def add_noise(self, x0, noise, t):
        """x_t = a_t x0 + s_t noise (t: a timestep / sigma, or a (B,) tensor of them)."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
        a, s = self.signal_noise(t, x0)
        return a * x0 + s * noise

    def target(self, x0, noise, t, prediction_type: str | None = None):
        """What a `prediction_type` model (default: the process's) should output for add_noise(x0, noise, t)."""
        prediction_type = check_prediction_type(
            prediction_type or self.default_prediction_type, discrete=not self.flow, flow=self.flow
        )
        return from_x0_eps(x0, noise, *self.signal_noise(t, x0), prediction_type)
