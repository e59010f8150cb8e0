"""Optimiser, learning-rate schedule and weight EMA shared by every loop: AdamW without decay where it
does not belong, linear warm-up then cosine, an exponential moving average of the weights for sampling.

    optimizer = adamw(model, config)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, total_steps)
    ema = EMA(model, decay=0.995); ema.update(model) after each step; ema.copy_to(fresh_model)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from clipkit.train.config import TrainConfig


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norms (1-D), embeddings and temperatures get no weight decay."""
    lowered = name.lower()
    return (
        param.ndim < 2
        or lowered.endswith("bias")
        or "embedding" in lowered
        or "logit_scale" in lowered
        or "logit_bias" in lowered
        or ".ln" in lowered
        or "norm" in lowered
    )


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rest if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay only where it belongs; the fused kernel when available."""
    groups = parameter_groups(model, config.weight_decay)
    kwargs: dict[str, Any] = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # device/dtype without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)


class WarmupCosine:
    """LR multiplier: linear warmup from 0 to 1, then cosine down to `final` at `total` steps.

    With a `time_budget` (seconds) the cosine spans whichever ends the run first: its progress is
    max(steps done / steps planned, elapsed / time_budget), `elapsed` being told by the trainer at
    every step (train/trainer.py), so a run stopped by its budget ends with its learning rate
    decayed as at its last planned step. A plain class (not a lambda) so LambdaLR's state_dict stays
    small and JSON-able (elapsed included: a resumed run continues the same schedule).
    """

    def __init__(self, warmup: int, total: int, final: float = 0.0, time_budget: float | None = None):
        if total < 1:
            raise ValueError(f"total steps={total}; expected >= 1")
        if time_budget is not None and not time_budget > 0:
            raise ValueError(f"time_budget={time_budget}; expected seconds > 0 or None")
        self.warmup, self.total, self.final = int(warmup), int(total), float(final)
        self.time_budget = time_budget
        self.elapsed = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.time_budget is not None:
            progress = max(progress, self.elapsed / self.time_budget)
        progress = min(1.0, progress)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, final: float = 0.0, time_budget: float | None = None
):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, final, time_budget))


class EMA:
    """Exponential moving average of a module's weights (the weights used for sampling).

    The decay warms up as (1 + n) / (10 + n) so a short run is not dominated by
    its random initialisation; after that it is `decay`.
    """

    def __init__(self, module: nn.Module, decay: float = 0.995):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in [0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {**self.shadow, "__num_updates": torch.tensor(self.num_updates)}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.num_updates = int(state.pop("__num_updates", torch.tensor(0)))
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: state[k].float().clone() for k in self.shadow}

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})
