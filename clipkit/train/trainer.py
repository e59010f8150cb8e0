"""The one run setup: every trainer (CLIP, prior, decoder, upsampler, AR prior, the labs' models) starts,
resumes, trains and ends its run through `Trainer`, and only the Task (data, loss, hooks) is its own.

    with Trainer(config, "prior") as trainer:       # run lock, Accelerator, run folder, seed (same on every rank)
        module = DiffusionPrior(model_config)       # built after the seed: the same weights on every rank
        trainer.prepare(module, num_samples=n, final_lr=0.05, ema_decay=0.995, replacement=True)
        result = trainer.fit(loop.Task(next_batches=trainer.random_rows(n), step_losses=row_losses(micro_loss)))
        final = trainer.ema_model()                 # the EMA weights in a fresh module
        trainer.write_summary({"steps": result.step})   # + stopped_by and the run's resumes

In order, what no trainer keeps a copy of:

- `with Trainer(...)`: one run per out_dir (runtime.run_lock, held by rank 0), the
  Accelerator (runtime.make_accelerator: threads, precision, gloo), the run folder
  (metrics.RunDir), seed_everything(seed) — the same on every rank, so a module built
  in the block starts identical everywhere. Leaving the block after a success ends
  the Accelerator's trackers and process group; the lock is released either way.
- `prepare`: the steps (max_steps, or epochs of num_samples // global batch, the
  global batch being batch_size x processes x grad_accum); seed_everything(seed,
  rank), so ranks draw different data from here on; AdamW and the warm-up + cosine
  schedule (optim.py); `accelerator.prepare`; the EMA of the weights; resume from
  config.resume. A checkpoint of another model is refused (ValueError naming both)
  before anything is written; another batch size, lr, data, ... is warned about and
  each resume is recorded in resumes.json. Only then config.json is written and the
  metrics rows past the resume point dropped, so a refused resume leaves the
  finished run's folder as it was.
- `fit`: the start line (the steps that will run, the epochs they cover, what ends
  the run), the loop (train/loop.py) with samples/step over all processes, the EMA
  update after each step and its weights in every checkpoint, and the time budget.
- `random_rows` / `row_losses`: the Task of models trained on in-memory rows (the
  unCLIP models, the labs'): random rows drawn by a generator seeded by (seed, rank,
  step), so ranks draw different rows and a resumed run continues the same stream.

The time budget (config.time_budget, seconds on the clock since the loop started,
a resumed run counting those before its checkpoint) is the loop's `should_stop`
hook: after the step on which it is spent the loop stops, checkpoints, evaluates
and exports as at max_steps, and the summary says `stopped_by: "time_budget"`
(else "max_steps" or "epochs"). The cosine schedule spans whichever ends the run
first (optim.WarmupCosine: progress = max(step / total, elapsed / budget)), so a
budgeted run ends with its learning rate decayed; estimating the steps a budget
buys instead would go wrong whenever the machine's load changes during the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clipkit.config import to_json
from clipkit.io import check_output_path, claim_output, write_json
from clipkit.train import loop, runtime
from clipkit.train.config import TrainConfig
from clipkit.train.metrics import RunDir
from clipkit.train.optim import EMA, WarmupCosine, adamw

logger = logging.getLogger(__name__)

# Config fields that change how a run is kept or when it ends, not what it learns: changing them on resume is
# recorded in resumes.json without a warning.
RUN_CONTROL = frozenset(
    {
        "out_dir",
        "resume",
        "max_steps",
        "epochs",
        "time_budget",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "num_workers",
        "tensorboard",
        "progress",
        "num_threads",
        "compile",
        "export_dir",
        "overwrite",
        "pipeline_dir",
        "sample_every",
        "val_data",
        "holdout_data",
        "val_max_samples",
        "eval_batch_size",
        "zeroshot_eval",
        "val_samples",
    }
)


UNBOUNDED_STEPS = loop.UNBOUNDED_STEPS


RUN_FORMAT = "clipkit-run"  # the .clipkit-output.json marker of a run folder
INPUT_FIELDS = ("train_data", "val_data", "holdout_data", "model", "clip", "embeddings")  # a run never writes there


def claim_run(config: TrainConfig, check_only: bool = False) -> Path:
    """clipkit.io's one output rule for a run folder, before any work: out_dir must be new, a run of ours
    (resumed or re-run) or allowed by `overwrite`; never one of the run's inputs, inside or around one.
    Then it is created and marked ours (`check_only`: refused or not, nothing is created)."""
    inputs = [v for v in (getattr(config, f, None) for f in INPUT_FIELDS) if isinstance(v, str)]
    if check_only:
        check_output_path(config.out_dir, RUN_FORMAT, inputs, config.overwrite)
        return Path(config.out_dir)
    return claim_output(config.out_dir, RUN_FORMAT, inputs, config.overwrite)


def wall_clock() -> float:
    """The clock of `time_budget` (tests replace it with a fake one)."""
    return time.perf_counter()


ConfigT = TypeVar("ConfigT", bound=TrainConfig, covariant=True)  # read only: a Trainer[subclass] is a Trainer


class Trainer(Generic[ConfigT]):
    """One training run's setup, the same for every model (see the module docstring).

    config: a TrainConfig (subclass); desc: the run's name in the start line, progress bar and logs;
    clock: what `time_budget` is measured on (wall clock; the generation lab may count CPU time).
    """

    accelerator: Any  # from `with Trainer(...)` on
    run: RunDir
    module: torch.nn.Module  # from prepare() on

    def __init__(self, config: ConfigT, desc: str = "train", clock: Callable[[], float] | None = None):
        budget = config.time_budget
        if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ValueError(f"time_budget={budget!r}; expected seconds > 0 (e.g. 2700 for 45 minutes) or null")
        self.config, self.desc = config, desc
        self.clock = clock or wall_clock
        self.ema: EMA | None = None
        self.state: dict = {}
        self.step = 0
        self.resumes: list[dict] = []
        self.result: loop.LoopResult | None = None
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------------- the run's process and folder

    def __enter__(self) -> Trainer[ConfigT]:
        with self._stack as stack:
            claim_run(self.config)  # the one place a run folder is created
            stack.enter_context(runtime.run_lock(self.config.out_dir))
            self.accelerator = runtime.make_accelerator(self.config)
            self.run = RunDir(self.config.out_dir, self.accelerator, self.config.keep_checkpoints)
            runtime.seed_everything(self.config.seed)  # the same on every rank: same initial weights
            self._stack = stack.pop_all()  # keep the lock until __exit__
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._stack:
            if exc_type is None:
                self.accelerator.wait_for_everyone()
                self.accelerator.end_training()  # trackers closed, process group destroyed

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def global_batch(self) -> int:
        """Samples per optimiser step over all processes."""
        return self.config.batch_size * self.world * self.config.grad_accum

    # ------------------------------------------------------------------------- optimiser, schedule, resume

    def prepare(
        self,
        module: torch.nn.Module,
        num_samples: int | None,
        *,
        final_lr: float = 0.0,
        ema_decay: float | None = None,
        replacement: bool = False,
        until_budget: bool = False,
        model: str | dict | None = None,
    ) -> torch.nn.Module:
        """Steps, per-rank seed, AdamW + schedule, `accelerator.prepare`, EMA, resume; returns the prepared model.

        num_samples: samples in an epoch (None: fresh data every step; max_steps is then required).
        replacement: rows are drawn at random (`random_rows`), so an epoch is a count, not a pass, and
        data smaller than one global batch is fine. until_budget: only time_budget ends the run (no step
        count; the schedule follows the clock alone). model: what the weights are, for the resume check
        (default: the module's class and its `config` dataclass).
        """
        c = self.config
        self.module, self.num_samples, self.until_budget = module, num_samples, until_budget
        self.steps_per_epoch, self.total_steps = self._steps(num_samples, replacement)
        # A step bound of UNBOUNDED_STEPS or more (max_steps / epochs set to it, as `clipkit fit` does) means the same.
        self.until_budget = until_budget = until_budget or (
            c.time_budget is not None and self.total_steps >= UNBOUNDED_STEPS
        )
        if until_budget:
            if c.time_budget is None:
                raise ValueError(f"{self.desc}: until_budget needs a time_budget (seconds); got null")
            self.total_steps = UNBOUNDED_STEPS
        runtime.seed_everything(c.seed, self.rank)  # ranks draw different data from here on
        optimizer = adamw(module, c)
        self.schedule = WarmupCosine(c.warmup_steps, self.total_steps, final_lr, c.time_budget)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        if ema_decay is not None:
            self.ema = EMA(module, ema_decay)
        self.model_identity = model if model is not None else describe_model(module)
        self.model, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.scheduler = scheduler
        self.state = self._resume()
        self.step = int(self.state.get("step", 0))
        self.run.write_config(c)  # only now: a refused resume wrote nothing
        self.run.metrics.truncate_after(self.step)
        if c.tensorboard:
            self.accelerator.init_trackers(
                self.desc, config={k: v for k, v in to_json(c).items() if isinstance(v, (int, float, str, bool))}
            )
        return self.model

    def _steps(self, num_samples: int | None, replacement: bool) -> tuple[int | None, int]:
        c = self.config
        if num_samples is None:
            if c.max_steps is None:
                raise ValueError(f"{self.desc} draws fresh data every step, so epochs mean nothing: set max_steps")
            return None, c.max_steps
        per_epoch = num_samples // self.global_batch
        if per_epoch == 0:
            if not replacement:
                raise ValueError(
                    f"{num_samples} samples make no full step of {self.global_batch} samples "
                    f"(batch_size x processes x grad_accum); lower batch_size"
                )
            per_epoch = 1
        return per_epoch, c.max_steps or c.epochs * per_epoch

    def _resume(self) -> dict:
        c, acc = self.config, self.accelerator
        path = self.run.checkpoints.resolve(c.resume)
        if path is not None:
            self._check_same_model(path)
        state = self.run.checkpoints.resume(c.resume, acc, self.model, self.optimizer, self.scheduler)
        if not state:
            return state
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(Path(state["path"]) / "ema.safetensors")))
        self._record_resume(state)
        return state

    def _check_same_model(self, path: Path) -> None:
        """Refuse, before anything is written, a checkpoint whose weights are another model's."""
        fix = "resume with the model it was trained with, or train into a fresh out_dir without resume"
        state_file = path / "state.json"
        recorded = json.loads(state_file.read_text()).get("model") if state_file.is_file() else None
        if recorded is not None and recorded != self.model_identity:
            old, new = _differences(recorded, self.model_identity)
            raise ValueError(
                f"resume={self.config.resume!r}: {path} holds a checkpoint of {old}, but this run trains {new}; {fix}"
            )
        weights = path / "model.safetensors"
        if not weights.is_file():
            return  # the checkpoint's own check names what is missing
        mine = {k: tuple(v.shape) for k, v in self.accelerator.unwrap_model(self.model).state_dict().items()}
        with safe_open(str(weights), "pt") as f:
            theirs = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if theirs != mine:
            key = next(k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"resume={self.config.resume!r}: {path} holds weights of another model than this "
                f"run's ({key}: {theirs.get(key, 'absent')} there, {mine.get(key, 'absent')} here); {fix}"
            )

    def _record_resume(self, state: dict) -> None:
        """Warn when the resumed run learns differently from the checkpoint's; append to resumes.json."""
        now = to_json(self.config)
        before = state.get("run_config")
        if before is None:  # older checkpoints: their run folder's config
            folder_config = Path(state["path"]).parent.parent / "config.json"
            before = json.loads(folder_config.read_text()) if folder_config.is_file() else {}
        changed = {k: [before[k], v] for k, v in now.items() if k in before and before[k] != v}
        processes = [state.get("world_size", self.world), self.world]
        entry = {
            "step": int(state["step"]),
            "from": state["path"],
            "time": round(time.time(), 1),
            "processes": processes,
            "changed": changed,
        }
        learning = {k: v for k, v in changed.items() if k not in RUN_CONTROL}
        if processes[0] != processes[1]:
            learning["processes"] = processes
        if learning and self.accelerator.is_main_process:
            logger.warning(
                "resuming %s at step %s with %s: this continues another run than the checkpoint's (recorded in %s)",
                state["path"],
                state["step"],
                ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in learning.items()),
                self.run.path / "resumes.json",
            )
        resumes_file = self.run.path / "resumes.json"
        earlier = json.loads(resumes_file.read_text()) if resumes_file.is_file() else []
        self.resumes = [*earlier, entry]
        if self.accelerator.is_main_process:
            write_json(resumes_file, self.resumes)

    # ------------------------------------------------------------------------- the loop

    def fit(self, task: loop.Task) -> loop.LoopResult:
        """Print the start line and run the loop with the run's hooks (samples/step, EMA, time budget)."""
        c, acc = self.config, self.accelerator
        own_after, own_extra, own_state, own_stop = (
            task.after_step,
            task.checkpoint_extra,
            task.data_state,
            task.should_stop,
        )

        def after_step(step: int) -> None:
            self.step = step
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.model))
            if own_after is not None:
                own_after(step)

        def checkpoint_extra(tmp: Path) -> None:
            if self.ema is not None:
                save_file({k: v.contiguous() for k, v in self.ema.state_dict().items()}, str(tmp / "ema.safetensors"))
            if own_extra is not None:
                own_extra(tmp)

        def data_state() -> dict:
            return {**own_state(), "model": self.model_identity, "run_config": to_json(c)}

        def should_stop(step: int, elapsed: float) -> str | None:
            self.schedule.elapsed = elapsed  # the cosine's time fraction (optim.WarmupCosine)
            if c.time_budget is not None and elapsed >= c.time_budget:
                return "time_budget"
            return own_stop(step, elapsed) if own_stop is not None else None

        task = dataclasses.replace(
            task,
            after_step=after_step,
            checkpoint_extra=checkpoint_extra,
            data_state=data_state,
            samples_per_step=self.global_batch,
            clock=self.clock,
            should_stop=should_stop if c.time_budget is not None or own_stop is not None else None,
        )
        acc.print(self.start_line())
        result = loop.train_loop(
            c, acc, self.run, task, self.model, self.optimizer, self.scheduler, self.total_steps, self.state
        )
        if result.stopped_by is None:  # it ran the steps it planned
            result.stopped_by = "max_steps" if c.max_steps else "epochs"
        self.result = result
        return result

    def start_line(self) -> str:
        """What will run: steps, the epochs they cover, what ends the run, where."""
        c, acc = self.config, self.accelerator
        resumed = f" from step {self.step} (resumed)" if self.step else ""
        name = self.model_identity if isinstance(self.model_identity, str) else self.model_identity.get("class")
        if self.until_budget:
            epoch = f", an epoch being {self.steps_per_epoch} steps" if self.num_samples else ""
            what = (
                f"steps{resumed} of {self.global_batch} samples until time_budget={c.time_budget:g} s is spent{epoch}"
            )
        else:
            ends = f"max_steps={c.max_steps}" if c.max_steps else f"epochs={c.epochs}"
            if c.time_budget is not None:
                ends += f", or time_budget={c.time_budget:g} s if that comes first"
            todo = self.total_steps - self.step
            covers = (
                "fresh samples every step"
                if self.num_samples is None
                else f"{todo * self.global_batch / self.num_samples:.3g} epoch(s) of {self.num_samples} samples"
            )
            what = f"{todo} steps{resumed} of {self.global_batch} samples = {covers} ({ends})"
        return (
            f"[{self.desc}] training {name}: {what}; {self.world} process(es), {acc.distributed_type.value}, "
            f"precision {c.mixed_precision}, {torch.get_num_threads()} torch thread(s)"
        )

    # ------------------------------------------------------------------------- after the loop

    def ema_model(self, make: Callable[[], torch.nn.Module] | None = None) -> torch.nn.Module:
        """A fresh module (make(), default type(module)(module.config)) holding the EMA weights."""
        if self.ema is None:
            raise RuntimeError("ema_model() needs prepare(..., ema_decay=...)")
        net = make() if make is not None else type(self.module)(self.module.config)
        self.ema.copy_to(net)
        return net

    def write_summary(self, summary: dict) -> dict:
        """summary.json (rank 0) with why the run stopped and its resumes; returns the summary written."""
        if self.result is not None:
            summary.setdefault("stopped_by", self.result.stopped_by)
        summary.setdefault("resumes", self.resumes)
        self.run.write_summary(summary)
        return summary

    # ------------------------------------------------------------------------- in-memory rows

    def random_rows(self, num_rows: int) -> Callable[[], list]:
        """The loop's next_batches for data held in memory: grad_accum micro-batches of (row indices (B,),
        generator), both drawn from a generator seeded by (seed, rank, step); the loss draws its noise from
        the same generator, so a resumed run continues the same stream and ranks draw different rows."""
        c = self.config

        def next_batches() -> list:
            g = torch.Generator().manual_seed(int(c.seed) * 1_000_003 + self.rank * 10_007 + self.step)
            return [(torch.randint(0, num_rows, (c.batch_size,), generator=g), g) for _ in range(c.grad_accum)]

        return next_batches


def row_losses(micro_loss: Callable) -> Callable:
    """The loop's step_losses for `random_rows`: micro_loss(net, idx, generator) of each micro-batch / N."""

    def step_losses(net, micro):
        for idx, g in micro:
            yield micro_loss(net, idx, g) / len(micro), None

    return step_losses


def describe_model(module: torch.nn.Module) -> dict:
    """What the weights are: the module's class and, if it has one, its config dataclass (the resume check)."""
    cfg = getattr(module, "config", None)
    out: dict = {"class": type(module).__name__}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out.update(json.loads(json.dumps(to_json(cfg), default=str)))
    return out


def _differences(old, new) -> tuple[str, str]:
    """Two model identities, each shown by what differs (the class and the differing fields)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return repr(old), repr(new)
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "class"]

    def show(d: dict) -> str:
        fields = ", ".join(f"{k}={d.get(k)!r}" for k in keys)
        return f"{d.get('class')}" + (f" ({fields})" if fields else "")

    return show(old), show(new)
