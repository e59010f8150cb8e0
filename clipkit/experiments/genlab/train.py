"""Training the lab's models through the one loop (clipkit.train.loop), each for a wall-clock budget.

    cfg = LabTrainConfig(out_dir="runs/genlab/models/ar_raster", budget_seconds=90)
    model, stats = train_lab_model(PixelAR(...), lambda net, idx, g: ..., len(data), cfg)

The loop needs its step count up front (the learning-rate schedule ends there),
so a budget becomes steps by timing `calibration_steps` forward + backward
passes first (no update is made; the time is reported, not charged), then the
loop runs budget / seconds-per-step steps with AdamW, warm-up + cosine, EMA of
the weights (the EMA model is returned and sampled), and its checkpoint. On a
machine shared with other work the steps a budget buys vary: `stats` records
the steps, the measured seconds per step and the training seconds the loop saw.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from clipkit.train.config import TrainConfig


@dataclass
class LabTrainConfig(TrainConfig):
    out_dir: str = "runs/genlab/models/model"
    lr: float = 2e-3
    weight_decay: float = 0.0
    beta2: float = 0.99
    batch_size: int = 32
    warmup_steps: int = 20
    log_every: int = 25
    progress: bool = False
    num_threads: int | None = 1
    keep_checkpoints: int = 1
    budget_seconds: float = 60.0        # wall clock for this model (turned into max_steps when that is None)
    min_steps: int = 10
    calibration_steps: int = 3
    ema_decay: float = 0.99

    def validate(self) -> None:
        super().validate()
        if not self.budget_seconds > 0:
            raise ValueError(f"budget_seconds={self.budget_seconds}; expected > 0")


def _timed_steps(module: torch.nn.Module, micro_loss, n: int, config: LabTrainConfig) -> float:
    """Seconds per training step (forward + backward, no update) over `calibration_steps` steps."""
    g = torch.Generator().manual_seed(config.seed + 99)
    micro_loss(module, torch.randint(0, n, (config.batch_size,), generator=g), g).backward()   # warm-up
    start = time.perf_counter()
    for _ in range(config.calibration_steps):
        micro_loss(module, torch.randint(0, n, (config.batch_size,), generator=g), g).backward()
    module.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / config.calibration_steps


def train_lab_model(module: torch.nn.Module, micro_loss: Callable, num_data: int, config: LabTrainConfig,
                    make_copy: Callable[[], torch.nn.Module] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train `module` with `micro_loss(net, idx, generator) -> loss` on random rows idx of the data (seeded by
    (seed, step), so a resumed run continues the same stream); returns (EMA model in eval mode, stats).
    make_copy: a fresh module of the same architecture (default: type(module)(module.config))."""
    from safetensors.torch import load_file, save_file

    from clipkit.train import loop, runtime
    from clipkit.train.metrics import RunDir
    from clipkit.train.optim import EMA

    config = dataclasses.replace(config)             # max_steps is filled in below: leave the caller's as it was
    config.validate()
    accelerator = runtime.make_accelerator(config)
    run = RunDir(config.out_dir, accelerator, config.keep_checkpoints)
    runtime.seed_everything(config.seed)
    seconds_per_step = None
    if config.max_steps is None:
        seconds_per_step = _timed_steps(module, micro_loss, num_data, config)
        config.max_steps = max(config.min_steps, int(config.budget_seconds / seconds_per_step))
    run.write_config(config)
    total = config.max_steps
    ema = EMA(module, config.ema_decay)
    model, optimizer, scheduler, state = loop.prepare(
        config, accelerator, run, module, total, final_lr=0.05,
        load_extra=lambda path: ema.load_state_dict(load_file(str(Path(path) / "ema.safetensors"))))
    step = [int(state.get("step", 0))]

    def next_batches() -> list:
        g = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + step[0])
        return [(torch.randint(0, num_data, (config.batch_size,), generator=g), g) for _ in range(config.grad_accum)]

    def step_losses(net, micro):
        for idx, g in micro:
            yield micro_loss(net, idx, g) / len(micro), None

    def after_step(s: int) -> None:
        step[0] = s
        ema.update(accelerator.unwrap_model(model))

    def save_ema(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))

    task = loop.Task(next_batches=next_batches, step_losses=step_losses, after_step=after_step,
                     samples_per_step=config.batch_size * config.grad_accum, checkpoint_extra=save_ema,
                     desc=Path(config.out_dir).name)
    result = loop.train_loop(config, accelerator, run, task, model, optimizer, scheduler, total, state)
    final = make_copy() if make_copy is not None else type(module)(module.config)
    ema.copy_to(final)
    rows = [r for r in run.metrics.rows() if "loss" in r]
    stats = {"steps": result.step, "train_seconds": round(result.train_seconds, 1),
             "budget_seconds": config.budget_seconds, "batch_size": config.batch_size,
             "seconds_per_step_calibrated": None if seconds_per_step is None else round(seconds_per_step, 4),
             "first_loss": rows[0]["loss"] if rows else None, "final_loss": rows[-1]["loss"] if rows else None,
             "params": sum(p.numel() for p in final.parameters())}
    return final.eval(), stats
