"""Training the lab's models through the one loop (clipkit.train.loop), each for a time budget.

    cfg = LabTrainConfig(out_dir="runs/genlab/models/ar_raster", budget_seconds=90)
    model, stats = train_lab_model(PixelAR(...), lambda net, idx, g: ..., len(data), cfg)

A budget is time, the same for every model: wall clock by default. On a
machine shared with other work the wall clock also measures the neighbours (a
model trained while they are busy gets fewer steps than one trained while they
rest), so `clock="cpu"` counts this process's CPU time instead (with one
thread, what the wall clock would read on an idle machine, with two about twice that; the run then takes
longer than the budget when the machine is busy). Both are recorded. The loop
counts steps and its learning-rate schedule
ends at a step count, so: `calibration_steps` timed forward + backward passes
(no update; not charged) estimate the steps the budget buys; the cosine
schedule aims at that estimate and is re-aimed every few steps from the pace
so far; the loop is given a generous upper bound and is stopped from its
`after_step` hook once the budget is spent (the loop has no time stop of its
own), then the EMA weights (what is returned and sampled) and a checkpoint are
written as the loop would. With `max_steps` set instead, it runs exactly that.
`stats` records steps, seconds and losses.
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
    budget_seconds: float = 60.0        # training time of this model (the loop stops there when max_steps is None)
    clock: str = "wall"                 # wall | cpu: this process's CPU time (fairer on a shared machine)
    min_steps: int = 10
    calibration_steps: int = 3
    ema_decay: float = 0.99

    def validate(self) -> None:
        super().validate()
        if not self.budget_seconds > 0:
            raise ValueError(f"budget_seconds={self.budget_seconds}; expected > 0")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock={self.clock!r}; expected one of {tuple(CLOCKS)}")


def _timed_steps(module: torch.nn.Module, micro_loss, n: int, config: LabTrainConfig) -> float:
    """Seconds per training step (forward + backward, no update) over `calibration_steps` steps."""
    g = torch.Generator().manual_seed(config.seed + 99)
    micro_loss(module, torch.randint(0, n, (config.batch_size,), generator=g), g).backward()   # warm-up
    now = CLOCKS[config.clock]
    start = now()
    for _ in range(config.calibration_steps):
        micro_loss(module, torch.randint(0, n, (config.batch_size,), generator=g), g).backward()
    module.zero_grad(set_to_none=True)
    return (now() - start) / config.calibration_steps


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class _BudgetSpent(Exception):
    """Raised from the loop's after_step hook when the time budget is spent."""


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
    seconds_per_step, on_clock = None, config.max_steps is None
    if on_clock:
        seconds_per_step = _timed_steps(module, micro_loss, num_data, config)
        estimate = max(config.min_steps, int(config.budget_seconds / seconds_per_step))
        config.max_steps = 4 * estimate + config.min_steps        # an upper bound; the clock ends the run
    run.write_config(config)
    total = config.max_steps
    ema = EMA(module, config.ema_decay)
    model, optimizer, scheduler, state = loop.prepare(
        config, accelerator, run, module, total, final_lr=0.05,
        load_extra=lambda path: ema.load_state_dict(load_file(str(Path(path) / "ema.safetensors"))))
    step = [int(state.get("step", 0))]
    cosine = scheduler.lr_lambdas[0]                             # optim.WarmupCosine, shared by the groups
    if on_clock:
        cosine.total = estimate
    now = CLOCKS[config.clock]
    clock = {"start": None, "wall": None, "cpu": None}

    def next_batches() -> list:
        if clock["start"] is None:
            clock["start"], clock["wall"], clock["cpu"] = now(), time.perf_counter(), time.process_time()
        g = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + step[0])
        return [(torch.randint(0, num_data, (config.batch_size,), generator=g), g) for _ in range(config.grad_accum)]

    def step_losses(net, micro):
        for idx, g in micro:
            yield micro_loss(net, idx, g) / len(micro), None

    def after_step(s: int) -> None:
        step[0] = s
        ema.update(accelerator.unwrap_model(model))
        if on_clock:
            elapsed = now() - clock["start"]
            if elapsed >= config.budget_seconds and s >= config.min_steps:
                raise _BudgetSpent(s)
            if s % 5 == 0:                                        # re-aim the schedule's end at the budget
                cosine.total = max(s + 1, int(s * config.budget_seconds / elapsed))

    def save_ema(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))

    task = loop.Task(next_batches=next_batches, step_losses=step_losses, after_step=after_step,
                     samples_per_step=config.batch_size * config.grad_accum, checkpoint_extra=save_ema,
                     desc=Path(config.out_dir).name)
    try:
        result = loop.train_loop(config, accelerator, run, task, model, optimizer, scheduler, total, state)
        steps, seconds = result.step, result.train_seconds
    except _BudgetSpent as spent:
        steps, seconds = spent.args[0], now() - clock["start"]
        run.checkpoints.save(steps, accelerator, model, optimizer, scheduler, task.data_state(), extra=save_ema)
    final = make_copy() if make_copy is not None else type(module)(module.config)
    ema.copy_to(final)
    rows = [r for r in run.metrics.rows() if "loss" in r]
    stats = {"steps": steps, "train_seconds": round(seconds, 1),
             "clock": config.clock, "wall_seconds": round(time.perf_counter() - clock["wall"], 1),
             "cpu_seconds": round(time.process_time() - clock["cpu"], 1),
             "budget_seconds": config.budget_seconds, "batch_size": config.batch_size,
             "seconds_per_step_calibrated": None if seconds_per_step is None else round(seconds_per_step, 4),
             "first_loss": rows[0]["loss"] if rows else None, "final_loss": rows[-1]["loss"] if rows else None,
             "params": sum(p.numel() for p in final.parameters())}
    return final.eval(), stats
