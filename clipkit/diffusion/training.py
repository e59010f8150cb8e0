"""Training helpers: noisy inputs, targets and condition dropout, for any process.

One training step:

    xt, t, target = training_batch(process, x0, prediction_type="epsilon", generator=g)
    cond = drop_condition(cond, p=0.1, null=model.null_cond, generator=g)   # learns both CFG branches
    loss = F.mse_loss(model(xt, t, cond), target)

or simply `loss = diffusion_loss(model, process, x0, cond, p_uncond=0.1, null_cond=model.null_cond)`.
Min-SNR-gamma weighting (Hang et al. 2023) per sample:

    w = loss_weights(schedule, t, "v", "min_snr", gamma=5.0)                # (B,)
    loss = weighted_mse(model(xt, t, cond), target, w)
`process` is a NoiseSchedule (t: long timesteps 0..N-1, what DDPM/DDIM samplers give the model)
or a FlowProcess (t: float sigma in [0, 1], what FlowMatchSampler gives the model); prediction_type
None means the process's own ("epsilon", "velocity").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipkit.diffusion.base import Cond, ModelFn, randn_like_gen
from clipkit.diffusion.flow import FlowProcess
from clipkit.diffusion.names import LOSS_WEIGHTINGS
from clipkit.diffusion.sampling import cond_tensors
from clipkit.diffusion.schedule import NoiseSchedule

Process = NoiseSchedule | FlowProcess


def loss_weights(
    schedule: NoiseSchedule,
    t: torch.Tensor,
    prediction_type: str,
    weighting: str = "none",
    gamma: float = 5.0,
    floor: float = 0.0,
) -> torch.Tensor:
    """(B,) float32 weights of each sample's squared error at timesteps t.

    "none": 1 (the plain MSE of the prediction target). "min_snr": the min-SNR-gamma
    strategy (Hang et al. 2023): every target is weighted so that its loss equals
    min(SNR, gamma) x |x0 - x0_hat|^2, i.e. eps-prediction by min(SNR, gamma) / SNR,
    v-prediction by min(SNR, gamma) / (SNR + 1), x0-prediction by min(SNR, gamma). The
    nearly clean timesteps (SNR >> gamma) stop dominating the gradient; for x0 it also
    lowers the weight of the noisiest ones, where the best x0 is a blurred mean. `floor` > 0
    weights x0 errors by clamp(SNR, floor, gamma) instead: with floor 1 the noisiest timesteps
    keep the weight of the plain x0 loss (the layout of an image is decided there).
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}")
    if weighting == "none":
        return torch.ones(len(t), device=t.device)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"min_snr weighting needs a NoiseSchedule, got {schedule!r}")
    if not gamma > 0 or not 0 <= floor <= gamma:
        raise ValueError(
            f"gamma={gamma!r}, floor={floor!r}; expected gamma > 0 (5 in the paper) and "
            f"0 <= floor <= gamma (0 in the paper)"
        )
    snr = schedule.snr(t.cpu())  # float64 (B,)
    clipped = snr.clamp(min=floor, max=gamma)
    per_type = {"epsilon": clipped / snr, "v": clipped / (snr + 1), "sample": clipped}
    if prediction_type not in per_type:
        raise ValueError(f"min_snr weighting is defined for {tuple(per_type)}, got {prediction_type!r}")
    return per_type[prediction_type].float().to(t.device)


def weighted_mse(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of weights[i] x the mean squared error of sample i (plain MSE when weights is None)."""
    if output.shape != target.shape:
        raise ValueError(f"model output {tuple(output.shape)} differs from target {tuple(target.shape)}")
    per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return per_sample.mean() if weights is None else (per_sample * weights.to(per_sample)).mean()


def training_batch(
    process: Process,
    x0: torch.Tensor,
    prediction_type: str | None = None,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for a batch of clean samples x0 (batch first); t and noise are drawn with
    `generator` unless given."""
    if not isinstance(process, (NoiseSchedule, FlowProcess)):
        raise TypeError(f"process must be a NoiseSchedule or a FlowProcess, got {process!r}")
    if noise is None:
        noise = randn_like_gen(x0, generator)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and x0 {tuple(x0.shape)} differ in shape")
    if t is None:
        t = process.sample_t(x0.shape[0], generator, device=x0.device)
    return process.add_noise(x0, noise, t), t, process.target(x0, noise, t, prediction_type)


def drop_condition(
    cond: Cond, p: float, null: Cond = None, generator: torch.Generator | None = None, return_mask: bool = False
) -> Cond | tuple[Cond, torch.Tensor]:
    """Replace each row of `cond` by `null` with probability p (classifier-free guidance training).

    cond: (B, ...) tensor, or a dict / tuple of them (one mask is shared across entries).
    null: the "no condition" value: a tensor broadcastable to one row (a learned nn.Parameter, an
    embedding of the empty prompt, ...) or a dict / tuple matching cond; None means zeros.
    Gradients flow into a learned null through torch.where.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must lie in [0, 1], got {p!r}")
    first = next(cond_tensors(cond), None)
    if first is None:
        raise TypeError(f"cond must be a tensor or a dict / tuple of tensors, got {type(cond).__name__}")
    mask = torch.rand(first.shape[0], generator=generator).to(first.device) < p  # (B,) True = dropped
    out = _apply_drop(cond, null, mask)
    return (out, mask) if return_mask else out


def _apply_drop(c, null, mask: torch.Tensor):
    if isinstance(c, torch.Tensor):
        if null is None:
            null = torch.zeros((), dtype=c.dtype, device=c.device)
        null = torch.as_tensor(null, device=c.device)
        if c.dtype.is_floating_point:
            null = null.to(c.dtype)
        m = mask.reshape(-1, *([1] * (c.ndim - 1)))
        return torch.where(m, null.expand_as(c) if null.ndim else null, c)
    if isinstance(c, dict):
        return {k: _apply_drop(v, None if null is None else null[k], mask) for k, v in c.items()}
    return type(c)(
        _apply_drop(v, None if null is None else n, mask)
        for v, n in zip(c, null if null is not None else [None] * len(c))
    )


def diffusion_loss(
    model_fn: ModelFn,
    process: Process,
    x0: torch.Tensor,
    cond: Cond = None,
    prediction_type: str | None = None,
    p_uncond: float = 0.0,
    null_cond: Cond = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared error of model_fn(x_t, t, cond) against the target, with condition dropout."""
    xt, t, target = training_batch(process, x0, prediction_type, generator)
    if cond is not None and p_uncond > 0:
        cond = drop_condition(cond, p_uncond, null_cond, generator)
    out = model_fn(xt, t, cond)
    if out.shape != target.shape:
        raise ValueError(f"model output {tuple(out.shape)} differs from target {tuple(target.shape)}")
    return F.mse_loss(out, target)
