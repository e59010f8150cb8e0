"""Pieces every clipkit training loop shares: config, Accelerator, checkpoints, metrics, shutdown.

A training loop (CLIP here, the unCLIP prior and decoder elsewhere) uses them
like this::

    from dataclasses import dataclass
    from clipkit.train import common

    @dataclass
    class DecoderConfig(common.TrainConfig):      # every field needs a default
        unet_width: int = 64

    def train_decoder(config: DecoderConfig) -> dict:
        accelerator = common.make_accelerator(config)          # CPU multi-process aware, bf16, trackers
        run = common.RunDir(config.out_dir, accelerator)      # config.json, metrics.jsonl, checkpoints/
        run.write_config(config)
        common.seed_everything(config.seed, accelerator.process_index)
        model = ...
        optimizer = common.adamw(model, config)                # no weight decay on biases/norms/embeddings
        scheduler = common.warmup_cosine(optimizer, config.warmup_steps, total_steps)
        model, optimizer = accelerator.prepare(model, optimizer)   # scheduler stepped by us, once per step
        state = run.checkpoints.resume(config.resume, accelerator, model, optimizer, scheduler)
        step = state.get("step", 0)                             # + your data position, e.g. state["batch_in_epoch"]
        run.metrics.truncate_after(step)                        # the curve continues from the checkpoint
        for batch in ...:
            with accelerator.accumulate(model):
                loss = ...
                loss_value = common.check_finite(accelerator, loss, step, run)   # collective; raises on nan/inf
                accelerator.backward(loss)
                ...
            if accelerator.sync_gradients:
                step += 1
                run.metrics.log({"step": step, "loss": loss_value})
                if step % config.checkpoint_every == 0:
                    run.checkpoints.save(step, accelerator, model, optimizer, scheduler, {"step": step, ...})
        run.metrics.plot(run.path / "curves.png", ["loss"])

    # the script's entry point (and only there):
    if __name__ == "__main__":
        common.exit_cleanly(common.main_guard(lambda: train_decoder(common.parse_config(DecoderConfig))))

Launching: `accelerate launch script.py --config cfg.json [--field value ...]` for
one process; for N CPU processes use `accelerate launch --multi_gpu --num_processes N
--num_machines 1 --mixed_precision no --dynamo_backend no script.py ...` (with the
`cpu=True` that make_accelerator passes when there is no GPU, that gives MULTI_CPU
over gloo) or `torchrun --standalone --nproc_per_node N script.py ...`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clipkit.io import atomic_directory, atomic_file, write_json

MIXED_PRECISIONS = ("no", "bf16", "fp16")


# ============================================================================ config

@dataclass
class TrainConfig:
    """Fields every loop shares. Subclass it (as a @dataclass, fields with defaults) for a loop's own."""

    out_dir: str = "runs/train"            # run folder: config.json, metrics.jsonl, checkpoints/, curves.png
    seed: int = 0
    epochs: int = 1                       # passes over the data (an epoch is num_samples // global batch steps)
    max_steps: int | None = None          # stop after this many optimiser steps (overrides epochs)
    batch_size: int = 64                  # per process, per micro-batch (open_clip's convention)
    grad_accum: int = 1                   # micro-batches per optimiser step
    lr: float = 5e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float | None = 1.0         # max global gradient norm; None = off
    mixed_precision: str = "no"           # no | bf16 | fp16 (Accelerate autocast; bf16 works on CPU)
    log_every: int = 10                   # steps between metrics rows
    eval_every: int | None = None         # steps between evaluations (None: only at the end)
    checkpoint_every: int | None = None   # steps between full-state checkpoints (None: only at the end)
    keep_checkpoints: int = 2             # newest full-state checkpoints kept
    resume: str | None = None             # "latest" or a checkpoint directory
    num_workers: int = 1                  # DataLoader workers per process
    tensorboard: bool = False             # also log to TensorBoard through Accelerate trackers
    progress: bool = True                 # tqdm bar on rank 0
    num_threads: int | None = None        # intra-op threads per process (None: OMP_NUM_THREADS, else cores / local processes)
    compile: bool = False                 # torch.compile the prepared model (Accelerate's dynamo_backend inductor)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        positive = ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected >= 1")
        for name in ("max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected >= 1 or null")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r}; expected > 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads}; expected >= 1 or null")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps}, num_workers={self.num_workers}; expected >= 0")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of {MIXED_PRECISIONS}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp) -> tuple[type, bool]:
    """(scalar type, optional?) of an annotation like `int | None`; lists are (list, ...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {tp!r}")
        return _base_type(args[0])[0], True
    if origin in (list, tuple):
        return list, False
    return tp, False


def _coerce(name: str, tp, value):
    base, optional = _base_type(tp)
    if value is None:
        if not optional:
            raise ValueError(f"config field {name!r} may not be null")
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"config field {name!r} = {value!r}; expected true/false")
    if base is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise TypeError(f"config field {name!r} = {value!r}; expected an integer")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config field {name!r} = {value!r}; expected a number")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise TypeError(f"config field {name!r} = {value!r}; expected a string")
        return value
    if base is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config field {name!r} = {value!r}; expected a list")
        return list(value)
    return value


def config_from_dict(cls, data: dict):
    """Build a config dataclass from a dict; unknown keys and wrong types raise, naming the key."""
    types_ = _field_types(cls)
    unknown = sorted(k for k in data if k not in types_ and not k.startswith("_") and k != "description")
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for {cls.__name__}; valid: {sorted(types_)}")
    kwargs = {k: _coerce(k, types_[k], v) for k, v in data.items() if k in types_}
    config = cls(**kwargs)
    if hasattr(config, "validate"):
        config.validate()
    return config


def load_config(cls, path: str | os.PathLike, overrides: dict | None = None):
    """A config from a JSON file (keys starting with '_' and 'description' are comments) plus overrides."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from e
    return config_from_dict(cls, {**data, **(overrides or {})})


def add_config_arguments(parser, cls) -> None:
    """Add `--config FILE` and one `--field-name VALUE` flag per dataclass field (no defaults: unset = from file)."""
    import argparse

    parser.add_argument("--config", help="JSON config file (flags below override its fields)")
    group = parser.add_argument_group(f"{cls.__name__} fields (override the config file)")
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        base, optional = _base_type(tp)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f"[{default}]"
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif base is list:
            group.add_argument(flag, dest=f.name, nargs="*", default=None, help=help_)
        else:
            def parse(text, _base=base, _optional=optional, _name=f.name):
                if _optional and text.lower() in ("none", "null"):
                    return None
                try:
                    return _base(text)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"--{_name.replace('_', '-')} {text!r}: expected {_base.__name__}")
            group.add_argument(flag, dest=f.name, type=parse, default=None, metavar=base.__name__.upper(), help=help_)


def config_from_args(cls, args) -> Any:
    """Turn parsed flags (from add_config_arguments) into a config: file first, then the flags that were given."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if getattr(args, f.name, None) is not None}
    if getattr(args, "config", None):
        return load_config(cls, args.config, overrides)
    return config_from_dict(cls, overrides)


def parse_config(cls, argv: list[str] | None = None, description: str | None = None):
    """Parse `--config FILE --field value ...` (sys.argv by default) into a `cls` instance."""
    import argparse

    parser = argparse.ArgumentParser(description=description or cls.__doc__)
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


# ============================================================================ accelerator

def make_accelerator(config: TrainConfig, project_dir: str | os.PathLike | None = None):
    """An Accelerator for `config`: CPU when there is no GPU (MULTI_CPU/gloo when launched with N processes).

    On CPU each process gets cores // local processes intra-op threads, unless
    OMP_NUM_THREADS was set explicitly. Gradient accumulation and mixed
    precision come from the config; TensorBoard when `config.tensorboard`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = not torch.cuda.is_available()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    if config.num_threads is not None:
        # On a shared machine fewer threads than cores can be much faster: OpenMP
        # threads that wait on a busy core spin at every barrier.
        torch.set_num_threads(config.num_threads)
    elif cpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with="tensorboard" if config.tensorboard else None,
        project_dir=str(project_dir or config.out_dir),
        # every parameter gets a gradient in CLIP-like models; skipping the unused-parameter search is faster
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if config.compile else "no",
    )
    return accelerator


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch; ranks get different streams (seed + rank)."""
    s = int(seed) + 1009 * int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


# ============================================================================ optimiser & schedule

def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norms (1-D), embeddings and temperatures get no weight decay."""
    lowered = name.lower()
    return (param.ndim < 2 or lowered.endswith("bias") or "embedding" in lowered
            or "logit_scale" in lowered or "logit_bias" in lowered or ".ln" in lowered or "norm" in lowered)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rest if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay only where it belongs; the fused kernel when available."""
    groups = parameter_groups(model, config.weight_decay)
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):   # device/dtype without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)


class WarmupCosine:
    """LR multiplier: linear warmup from 0 to 1, then cosine down to `final` at `total` steps.

    A plain class (not a lambda) so LambdaLR's state_dict stays small and JSON-able.
    """

    def __init__(self, warmup: int, total: int, final: float = 0.0):
        if total < 1:
            raise ValueError(f"total steps={total}; expected >= 1")
        self.warmup, self.total, self.final = int(warmup), int(total), float(final)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int, final: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, final))


# ============================================================================ guards

class NonFiniteLossError(RuntimeError):
    """The loss became nan or inf; the run stopped before the update, checkpoints untouched."""


def check_finite(accelerator, loss: torch.Tensor, step: int, last_checkpoint: str | None = None) -> float:
    """Mean loss over processes as a float; raises NonFiniteLossError on every rank if any rank's is not finite.

    Collective (all ranks must call it at the same step): one rank stopping
    alone would leave the others waiting forever in the gradient all-reduce.
    """
    value = loss.detach().float().reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="mean")
    v = float(value)
    if not math.isfinite(v):
        where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else "; no checkpoint was written yet"
        raise NonFiniteLossError(
            f"loss is {v} at step {step + 1} (before the update); stopping{where}. Lower the lr, "
            f"enable grad_clip, or use mixed_precision='no' to find the cause")
    return v


# ============================================================================ checkpoints

def _rng_state() -> dict:
    """This process's python / numpy / torch (/ cuda) RNG states as JSON-ready lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [version, list(internal), gauss],
           "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class CheckpointManager:
    """Full-state checkpoints in ROOT/step_00000123/, each written atomically by rank 0.

    A checkpoint holds model.safetensors (the unwrapped model's weights),
    trainer.pt (optimiser + scheduler state; tensors and plain data only, read
    back with weights_only=True), rng.json (python/numpy/torch RNG of every
    rank) and state.json (step, data position and whatever the loop adds).
    A directory only exists once complete, so `latest` is always loadable.
    """

    def __init__(self, root: str | os.PathLike, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, int(keep))

    def list(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if p.is_dir() and (p / "state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def save(self, step: int, accelerator, model, optimizer, scheduler, state: dict,
             extra: Callable[[Path], None] | None = None) -> Path:
        """Collective: every rank contributes its RNG; rank 0 writes. `extra(tmpdir)` may add files."""
        from safetensors.torch import save_file

        rngs = [_rng_state()]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object
            rngs = gather_object(rngs)
        path = self.root / f"step_{step:08d}"
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            weights = {k: v.detach().contiguous().cpu() for k, v in unwrapped.state_dict().items()}
            with atomic_directory(path) as tmp:
                save_file(weights, str(tmp / "model.safetensors"))
                with atomic_file(tmp / "trainer.pt", "wb") as f:
                    torch.save({"optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict() if scheduler is not None else None}, f)
                write_json(tmp / "rng.json", {"ranks": rngs}, indent=None)
                if extra is not None:
                    extra(tmp)
                write_json(tmp / "state.json", {**state, "step": step, "world_size": accelerator.num_processes,
                                                "time": time.time()})
            for old in self.list()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return path

    def resolve(self, resume: str | None) -> Path | None:
        """'latest' -> newest checkpoint here (None if there is none); a path -> that checkpoint."""
        if resume is None:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"resume={resume!r} is not a checkpoint directory (no state.json); "
                                    f"use 'latest' or a {self.root}/step_* folder")
        return path

    def resume(self, resume: str | None, accelerator, model, optimizer, scheduler) -> dict:
        """Load a checkpoint into (prepared) model, optimiser, scheduler and this rank's RNG; return its state.json.

        Returns {} when there is nothing to resume from.
        """
        from safetensors.torch import load_file

        path = self.resolve(resume)
        if path is None:
            if resume == "latest":
                accelerator.print(f"resume=latest: no checkpoint in {self.root}, starting fresh")
            return {}
        state = json.loads((path / "state.json").read_text())
        accelerator.unwrap_model(model).load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        if scheduler is not None and trainer["scheduler"] is not None:
            scheduler.load_state_dict(trainer["scheduler"])
        rngs = json.loads((path / "rng.json").read_text())["ranks"]
        if len(rngs) == accelerator.num_processes:
            _set_rng_state(rngs[accelerator.process_index])
        else:
            accelerator.print(f"checkpoint was written by {len(rngs)} process(es), now {accelerator.num_processes}: "
                              f"RNG streams restart from the seed")
        state["path"] = str(path)
        accelerator.print(f"resumed from {path} at step {state['step']}")
        return state


# ============================================================================ run folder & metrics

class MetricsLog:
    """Append-only JSONL of metric rows (rank 0 writes; other ranks' calls are no-ops)."""

    def __init__(self, path: str | os.PathLike, accelerator=None):
        self.path = Path(path)
        self.accelerator = accelerator
        self.active = accelerator is None or accelerator.is_main_process

    def log(self, row: dict) -> None:
        row = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numeric, step=int(row.get("step", 0)))

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (written after the checkpoint we resume from) so the curve has no overlap."""
        if not self.active or not self.path.is_file():
            return
        kept = [r for r in self.rows() if int(r.get("step", 0)) <= step]
        with atomic_file(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def plot(self, png: str | os.PathLike, groups: dict[str, list[str]], title: str = "") -> Path | None:
        """One panel per group {panel title: [metric keys]} against step; saved as PNG (rank 0)."""
        if not self.active:
            return None
        return plot_curves(self.rows(), png, groups, title)


def plot_curves(rows: list[dict], png: str | os.PathLike, groups: dict[str, list[str]], title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    groups = {name: keys for name, keys in groups.items() if any(k in r for r in rows for k in keys)}
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.6), squeeze=False)
    for ax, (name, keys) in zip(axes[0], groups.items()):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=key, marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return png


class RunDir:
    """A run folder: config.json, metrics.jsonl, checkpoints/, summary.json."""

    def __init__(self, out_dir: str | os.PathLike, accelerator, keep_checkpoints: int = 2):
        self.path = Path(out_dir)
        self.accelerator = accelerator
        if accelerator.is_main_process:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(self.path / "metrics.jsonl", accelerator)
        self.checkpoints = CheckpointManager(self.path / "checkpoints", keep_checkpoints)

    def write_config(self, config) -> None:
        if self.accelerator.is_main_process:
            write_json(self.path / "config.json", config.to_json() if hasattr(config, "to_json") else dataclasses.asdict(config))

    def write_summary(self, summary: dict) -> None:
        if self.accelerator.is_main_process:
            write_json(self.path / "summary.json", summary)


def progress_bar(accelerator, total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=not (enabled and accelerator.is_main_process))


# ============================================================================ entry point

def main_guard(fn: Callable[[], Any]) -> int:
    """Run a training main; return 0, or 1 after printing the error (rank-prefixed when distributed).

    User errors print one line; set CLIPKIT_DEBUG=1 for their traceback too.
    """
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the entry point reports every failure as an exit code
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank is not None and is_distributed() else ""
        if isinstance(e, (ValueError, FileNotFoundError, NonFiniteLossError)) and not os.environ.get("CLIPKIT_DEBUG"):
            print(f"{prefix}error: {e}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1


def exit_cleanly(code: int) -> typing.NoReturn:
    """End the process with `code`, surviving the gloo SIGABRT-at-exit trap. Call it ONLY from an entry point.

    On this machine's torch build, a process that used a gloo process group
    aborts at interpreter exit in roughly 1 of 4 runs ("terminate called
    without an active exception", SIGABRT: gloo's threads are torn down by
    static destructors in the wrong order; pytorch/pytorch#190489), even after
    destroy_process_group(). The launcher then reports failure for a run that
    succeeded. The workaround: after a successful run, meet the other ranks at
    a barrier (so nobody tears down while a peer still talks to it), flush our
    streams, and leave with os._exit, which skips the static destructors.
    Outputs are already on disk (every writer here is atomic and synchronous).
    On failure we skip the barrier (a peer may never reach it) and just leave.
    Single-process runs exit normally; a launched rank (WORLD_SIZE > 1) always leaves by os._exit.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if code == 0 and is_distributed():          # a loop that ended its process group already met the others
            try:
                torch.distributed.barrier()
            except Exception:  # a peer died: still leave without the destructors
                code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
