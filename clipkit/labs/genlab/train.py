"""Training the lab's models through the one run setup (clipkit.train.trainer), each for a time budget.

    cfg = LabTrainConfig(out_dir="runs/genlab/models/ar_raster", time_budget=90)
    model, stats = train_lab_model(PixelAR(...), lambda net, idx, g: ..., len(data), cfg)

A budget is time, the same for every model: `time_budget` seconds of wall clock
by default. On a machine shared with other work the wall clock also measures the
neighbours (a model trained while they are busy gets fewer steps than one trained
while they rest), so `clock="cpu"` counts this process's CPU time instead (with
one thread, what the wall clock would read on an idle machine, with two about
twice that; the run then takes longer than the budget when the machine is busy).
Both are recorded. The budget is the trainer's: the loop's `should_stop` hook
ends the run after the step on which it is spent, then the checkpoint is written
and the EMA weights (what is returned and sampled) are taken as at a last step,
and the learning rate's cosine spans the budget rather than a step count (see
clipkit.train.trainer). With `max_steps` and `time_budget=None` it runs exactly
that many steps; with both, whichever ends first. `stats` records steps, seconds,
what stopped the run and the losses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clipkit.train import loop
from clipkit.train.config import TrainConfig
from clipkit.train.trainer import Trainer, row_losses

CLOCKS = {"cpu": time.process_time, "wall": None}  # None: the trainer's wall clock


@dataclass
class LabTrainConfig(TrainConfig):
    out_dir: str = "runs/genlab/models/model"
    # Training seconds of this model on `clock`; with max_steps too, whichever ends the run first (null: steps only).
    time_budget: float | None = 60.0
    lr: float = 2e-3
    weight_decay: float = 0.0
    beta2: float = 0.99
    batch_size: int = 32
    warmup_steps: int = 20
    log_every: int = 25
    progress: bool = False
    num_threads: int | None = 1
    keep_checkpoints: int = 1
    clock: str = "wall"  # wall | cpu: this process's CPU time (fairer on a shared machine)
    ema_decay: float = 0.99

    def validate(self) -> None:
        super().validate()
        if self.clock not in CLOCKS:
            raise ValueError(f"clock={self.clock!r}; expected one of {tuple(CLOCKS)}")
        if self.time_budget is None and self.max_steps is None:
            raise ValueError("time_budget and max_steps are both null; give the model a budget in seconds or steps")


def train_lab_model(
    module: torch.nn.Module,
    micro_loss: Callable,
    num_data: int,
    config: LabTrainConfig,
    make_copy: Callable[[], torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train `module` with `micro_loss(net, idx, generator) -> loss` on random rows idx of the data (seeded by
    (seed, rank, step), so a resumed run continues the same stream); returns (EMA model in eval mode, stats).
    make_copy: a fresh module of the same architecture (default: type(module)(module.config))."""
    config.validate()
    with Trainer(config, Path(config.out_dir).name, clock=CLOCKS[config.clock]) as trainer:
        trainer.prepare(
            module,
            num_data,
            final_lr=0.05,
            ema_decay=config.ema_decay,
            replacement=True,
            until_budget=config.max_steps is None,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        result = trainer.fit(
            loop.Task(
                next_batches=trainer.random_rows(num_data),
                step_losses=row_losses(micro_loss),
                desc=Path(config.out_dir).name,
            )
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        final = trainer.ema_model(make_copy)
        rows = [r for r in trainer.run.metrics.rows() if "loss" in r]
        stats = {
            "steps": result.step,
            "train_seconds": round(result.elapsed, 1),
            "stopped_by": result.stopped_by,
            "clock": config.clock,
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "budget_seconds": config.time_budget,
            "batch_size": config.batch_size,
            "samples_per_step": trainer.global_batch,
            "first_loss": rows[0]["loss"] if rows else None,
            "final_loss": rows[-1]["loss"] if rows else None,
            "params": sum(p.numel() for p in final.parameters()),
        }
        trainer.write_summary(dict(stats))
    return final.eval(), stats
