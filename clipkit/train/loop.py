"""The one training loop: every model (CLIP, prior, decoder, ...) trains through `train_loop`.

It is driven by train/trainer.py (the one run setup), which builds the
accelerator, run folder, optimiser and schedule and hands the loop a Task:

    with Trainer(config, "prior") as trainer:
        trainer.prepare(module, num_samples=n, ema_decay=0.995)
        result = trainer.fit(Task(
            next_batches=trainer.random_rows(n),                    # micro-batches of one step
            step_losses=row_losses(micro_loss),                      # (loss to backward, log share) each
            after_step=lambda step: clamp(module),                  # logit-scale clamp ...
        ))

One optimiser step: take the step's micro-batches from `next_batches` (None:
the data ran out, the loop ends the epoch and asks again; `on_epoch_end` raises
if an epoch yielded nothing), run `step_losses`, which yields one loss per
backward pass (ordinary accumulation: each micro-batch's loss / N; the
contrastive loss's cached-feature accumulation yields the full-batch loss once
per micro-batch, see train/clip.py), check every loss is finite on every rank
(collective) before its backward, clip the gradient norm, step, the task's
`after_step`, `should_stop` (see below), then the schedule. Gradients are
all-reduced once per step: the backward passes before the last run under `no_sync`. Forward passes run under
`accelerator.autocast()` (bf16 on CPU and GPU alike; on CPU attention then runs
on torch's math backend, see clipkit.perf.attention_backend); the optimiser keeps fp32
master weights. Metrics every `log_every` steps (loss, lr, samples/s of training
time), evaluation every `eval_every`, a full-state checkpoint every
`checkpoint_every` and at the end (weights checked finite first).

Stopping: at `total_steps`, or earlier when `should_stop(step, elapsed)` names a
reason (the trainer's time budget is one). It is asked after every step with
`elapsed` = seconds on the task's clock since the loop started, plus those of the
run it resumed (saved in each checkpoint); when distributed every rank is given
rank 0's `elapsed` and the ranks' answers are all-reduced, so all stop at the
same step. A stopped run ends exactly as a finished one: its last metrics row,
a checkpoint, the evaluation; `LoopResult.stopped_by` says why (None: it reached
total_steps).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clipkit.perf import FlopCount, attention_backend, utilisation
from clipkit.train.runtime import NonFiniteLossError, check_finite


@dataclass
class Task:
    """What a model's training plugs into the loop (see the module docstring)."""

    next_batches: Callable[[], list | None]
    # (loss to backward, its share of the step's loss for the log; None = the loss itself), one per micro-batch
    step_losses: Callable[[Any, list], Iterator[tuple[torch.Tensor, torch.Tensor | None]]]
    samples_per_step: int = 0  # global samples per optimiser step (for samples/s)
    after_step: Callable[[int], None] | None = None  # after optimizer.step(): EMA, clamps
    on_epoch_end: Callable[[], None] | None = None  # the data ran out: start the next epoch (or raise)
    data_state: Callable[[], dict] = field(default=lambda: {})  # data position saved in checkpoints
    evaluate: Callable[[int], dict] | None = None  # metrics (rank 0 logs them); every eval_every and at the end
    checkpoint_extra: Callable[[Path], None] | None = None  # add files (EMA weights) to a checkpoint
    on_checkpoint: Callable[[int], None] | None = None  # after a checkpoint: export the model
    log_extra: Callable[[], dict] | None = None  # more columns for each metrics row (logit scale)
    # after each step, on every rank: a reason to stop now ("time_budget", ...) or None to go on
    should_stop: Callable[[int, float], str | None] | None = None
    clock: Callable[[], float] = time.perf_counter  # the seconds `should_stop` is given (process_time: CPU time)
    desc: str = "train"


@dataclass
class LoopResult:
    step: int
    train_seconds: float
    checkpoint: str | None
    eval: dict
    utilisation: dict = field(default_factory=dict)  # clipkit.perf.utilisation of this run's training steps
    stopped_by: str | None = None  # should_stop's reason; None: total_steps was reached
    elapsed: float = 0.0  # seconds on the task's clock, resumed runs included


def check_weights_finite(module: torch.nn.Module, step: int) -> None:
    """Raise NonFiniteLossError naming the first parameter that holds nan/inf (nothing is written then)."""
    for name, p in module.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise NonFiniteLossError(
                f"parameter {name!r} holds nan/inf at step {step}; nothing was saved. "
                f"Lower the lr, enable grad_clip, or check the data"
            )


def train_loop(
    config, accelerator, run, task: Task, model, optimizer, scheduler, total_steps: int, state: dict | None = None
) -> LoopResult:
    """Optimise until `total_steps` or `task.should_stop`; returns the last step, training seconds, last
    checkpoint, evaluation and why it stopped."""
    state = state or {}
    step = int(state.get("step", 0))
    last_checkpoint, last_eval = state.get("path"), {}
    module = accelerator.unwrap_model(model)
    started, elapsed_before = task.clock(), float(state.get("elapsed", 0.0))

    def elapsed() -> float:
        return elapsed_before + task.clock() - started

    def checkpoint() -> str:
        check_weights_finite(module, step)
        path = run.checkpoints.save(
            step,
            accelerator,
            model,
            optimizer,
            scheduler,
            {**task.data_state(), "elapsed": elapsed()},
            extra=task.checkpoint_extra,
        )
        if task.on_checkpoint is not None:
            task.on_checkpoint(step)
        return str(path)

    def evaluate() -> dict:
        if task.evaluate is None:
            return {}
        row = task.evaluate(step)
        module.train()
        if row:
            run.metrics.log({"step": step, **row})
        accelerator.wait_for_everyone()
        return row

    bar = _progress(accelerator, total_steps, step, task.desc, config.progress)
    window_loss, window_steps, window_start, train_seconds = 0.0, 0, time.time(), 0.0
    first_step, flops_per_step, stopped_by = step, None, None
    model.train()
    while step < total_steps:
        micro = task.next_batches()
        if micro is None:  # the data ran out: next epoch
            if task.on_epoch_end is None:
                raise RuntimeError("next_batches returned None and the task has no on_epoch_end")
            task.on_epoch_end()
            continue
        losses = task.step_losses(model, micro)
        with FlopCount() if flops_per_step is None else contextlib.nullcontext() as counter:
            for i in range(len(micro)):
                sync = i == len(micro) - 1
                with (
                    contextlib.nullcontext() if sync else accelerator.no_sync(model),
                    accelerator.autocast(),
                    attention_backend(accelerator.device.type, config.mixed_precision),
                ):
                    loss, share = next(losses)
                    window_loss += check_finite(accelerator, loss if share is None else share, step, last_checkpoint)
                    accelerator.backward(loss)
        if flops_per_step is None:
            assert counter is not None  # the FlopCount entered above
            flops_per_step = counter.flops  # one step counted (forward + backward; this rank)
        if config.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        if task.after_step is not None:
            task.after_step(step)
        if task.should_stop is not None and step < total_steps:  # before the schedule, which may use the clock
            stopped_by = _agreed_stop(accelerator, task.should_stop, step, elapsed())
        scheduler.step()
        bar.update(1)
        if step % config.log_every == 0 or step == total_steps or stopped_by:
            seconds = time.time() - window_start
            train_seconds += seconds
            row = {
                "step": step,
                "loss": window_loss / window_steps,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": window_steps * task.samples_per_step / max(seconds, 1e-9),
                "train_seconds": round(train_seconds, 2),
                **(task.log_extra() if task.log_extra else {}),
            }
            run.metrics.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.0f}")
            window_loss, window_steps, window_start = 0.0, 0, time.time()
        if stopped_by:
            break
        if step < total_steps:
            busy = False
            if config.eval_every and step % config.eval_every == 0:
                last_eval, busy = evaluate(), True
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                last_checkpoint, busy = checkpoint(), True
            if busy and window_steps == 0:
                window_start = time.time()  # evaluation / checkpoint time is not training time
    bar.close()
    last_checkpoint = checkpoint()
    last_eval = evaluate() or last_eval
    usage = {}
    if flops_per_step and train_seconds > 0 and task.samples_per_step:
        per_sample = flops_per_step * accelerator.num_processes / task.samples_per_step
        rate = (step - first_step) * task.samples_per_step / train_seconds
        usage = utilisation(per_sample, rate, config.mixed_precision, accelerator.device)
        accelerator.print(
            f"[{task.desc}] {usage['gflop_per_sample']} GFLOP/sample x {rate:.0f} samples/s = "
            f"{usage['achieved_gflops']} GFLOP/s, {100 * usage['peak_fraction']:.1f}% of this "
            f"machine's {usage['precision']} matmul peak ({usage['peak_gflops']} GFLOP/s)"
        )
    return LoopResult(step, train_seconds, last_checkpoint, last_eval, usage, stopped_by, elapsed())


def _agreed_stop(accelerator, should_stop, step: int, elapsed: float) -> str | None:
    """should_stop's answer, the same on every rank: each is asked with rank 0's clock, and one rank's
    reason stops them all (collective when distributed: two scalars per step)."""
    if accelerator.num_processes == 1:
        return should_stop(step, elapsed)
    clock = torch.tensor([elapsed], dtype=torch.float64, device=accelerator.device)
    torch.distributed.broadcast(clock, src=0)
    reason = should_stop(step, float(clock))
    votes = accelerator.reduce(torch.tensor([1.0 if reason else 0.0], device=accelerator.device), reduction="sum")
    return reason or ("should_stop" if float(votes) > 0 else None)


UNBOUNDED_STEPS = 10**9  # the step bound of a run only its time budget ends (Trainer.prepare(until_budget=True))


def _progress(accelerator, total: int, initial: int, desc: str, enabled: bool):
    # A run only its time budget ends counts steps with no total (a bar of 10^9 steps says nothing).
    return tqdm(
        total=None if total >= UNBOUNDED_STEPS else total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        disable=not (enabled and accelerator.is_main_process),
    )
