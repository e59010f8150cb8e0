"""The diffusion vocabulary's names, torch-free (configs and CLI flags import them without torch).

What a denoiser outputs, for a noisy x_t = a * x0 + s * noise (parameterization.py converts):

    "epsilon"   the noise                                   (DDPM)
    "sample"    x0 itself                                   (unCLIP's prior and decoder here)
    "v"         a * noise - s * x0                          (Salimans & Ho 2022; discrete schedules)
    "velocity"  noise - x0 = d x_sigma / d sigma            (flow matching, a = 1 - sigma, s = sigma)
A NoiseSchedule (DDPM / DDIM) takes the first three, a FlowProcess "velocity" or "sample"
(an epsilon model says nothing about x0 at sigma = 1, where flow sampling starts).
"""

from __future__ import annotations

PREDICTION_TYPES = ("epsilon", "sample", "v", "velocity")
DISCRETE_PREDICTION_TYPES = ("epsilon", "sample", "v")
FLOW_PREDICTION_TYPES = ("velocity", "sample")
SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "sigmoid")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SIGMA_DISTRIBUTIONS = ("uniform", "logit_normal")
LOSS_WEIGHTINGS = ("none", "min_snr")  # per-timestep loss weights (training.loss_weights)


def check_prediction_type(prediction_type: str, discrete: bool = False, flow: bool = False) -> str:
    """Return `prediction_type` if it is valid (for a discrete schedule / a flow when asked), else raise."""
    valid = DISCRETE_PREDICTION_TYPES if discrete else FLOW_PREDICTION_TYPES if flow else PREDICTION_TYPES
    if prediction_type not in valid:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {valid}")
    return prediction_type
