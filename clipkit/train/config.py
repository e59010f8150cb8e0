"""Typed training configs: a dataclass per loop, read from JSON and overridden by command-line flags.

    @dataclass
    class DecoderTrainConfig(TrainConfig):        # every field needs a default
        decoder: DecoderConfig = field(default_factory=DecoderConfig)   # a nested model config
        cond_drop: float = 0.1

    config = load_config(DecoderTrainConfig, "cfg.json", {"lr": 1e-3})
    config = parse_config(DecoderTrainConfig, ["--config", "cfg.json", "--lr", "1e-3", "--decoder.channels", "32", "64"])

Strict on purpose: an unknown key, a wrong type or a non-finite number raises
ValueError / TypeError naming the field. A field whose type is a dataclass (the
model config a training run builds) is given as a JSON object of its fields, or
field by field on the command line (`--decoder.channels 32 64`). Keys starting
with "_" and "description" are comments. Torch-free: `clipkit --help` builds its
flags from these classes without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIXED_PRECISIONS = ("no", "bf16", "fp16")


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

    def __post_init__(self) -> None:
        # A nested model config may be given as a dict of its fields (as in JSON).
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            base, _ = _base_type(hints[f.name])
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(base) and isinstance(value, dict):
                setattr(self, f.name, config_from_dict(base, value, what=f.name))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected >= 1")
        for name in ("max_steps", "eval_every", "checkpoint_every", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected >= 1 or null")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}; expected > 0")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps}, num_workers={self.num_workers}; expected >= 0")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of {MIXED_PRECISIONS}")

    def to_json(self) -> dict:
        return to_json(self)


def to_json(config) -> dict:
    """A (nested) config dataclass as plain JSON data; nested model configs use their own to_json."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = value.to_json() if hasattr(value, "to_json") else to_json(value)
        out[f.name] = value
    return out


# ----------------------------------------------------------------------------- types

def _base_type(tp) -> tuple[Any, bool]:
    """(scalar type, optional?) of an annotation like `int | None`; lists and tuples are (list, ...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {tp!r}")
        return _base_type(args[0])[0], True
    if origin in (list, tuple) or tp in (list, tuple):
        return list, False
    return tp, False


def _coerce(name: str, tp, value):
    base, optional = _base_type(tp)
    if value is None:
        if not optional:
            raise ValueError(f"config field {name!r} may not be null")
        return None
    if dataclasses.is_dataclass(base):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"config field {name!r} = {value!r}; expected an object of {base.__name__} fields")
        return config_from_dict(base, value, what=name)
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
        if not math.isfinite(value):
            raise ValueError(f"config field {name!r} = {value!r}; expected a finite number")
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


def config_from_dict(cls, data: dict, what: str | None = None):
    """Build a config dataclass from a dict; unknown keys and wrong types raise, naming the key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in known and not k.startswith("_") and k != "description")
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for {what or cls.__name__}; valid: {sorted(known)}")
    prefix = f"{what}." if what else ""
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items() if k in known}
    try:
        config = cls(**kwargs)
    except (ValueError, TypeError) as e:
        if what is None:
            raise
        raise type(e)(f"{what}: {e}") from e
    if hasattr(config, "validate"):
        config.validate()
    return config


def load_config(cls, path: str | os.PathLike, overrides: dict | None = None):
    """A config from a JSON file plus overrides (nested objects merge field by field)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} holds a {type(data).__name__}; expected a JSON object")
    return config_from_dict(cls, _merge(data, overrides or {}))


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- command line

def _flag_fields(cls, prefix: str = ""):
    """(dotted name, type, default) for every scalar field, nested dataclass fields included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        base, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(base):
            yield from _flag_fields(base, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name], default


def add_config_arguments(parser, cls) -> None:
    """`--config FILE` and one `--field-name VALUE` flag per field (`--model.field` for nested ones)."""
    import argparse

    parser.add_argument("--config", help="JSON config file (flags below override its fields)")
    group = parser.add_argument_group(f"{cls.__name__} fields (override the config file)")
    for name, tp, default in _flag_fields(cls):
        base, optional = _base_type(tp)
        flag = "--" + name.replace("_", "-")
        help_ = f"[{default}]"
        if base is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif base is list:
            group.add_argument(flag, dest=name, nargs="*", default=None, help=help_)
        else:
            def parse(text, _base=base, _optional=optional, _flag=flag):
                if _optional and text.lower() in ("none", "null"):
                    return None
                try:
                    value = _base(text)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"{_flag} {text!r}: expected {_base.__name__}") from None
                if _base is float and not math.isfinite(value):
                    raise argparse.ArgumentTypeError(f"{_flag} {text!r}: expected a finite number")
                return value
            group.add_argument(flag, dest=name, type=parse, default=None, metavar=base.__name__.upper(), help=help_)


def config_from_args(cls, args) -> Any:
    """Parsed flags (from add_config_arguments) -> a config: the file first, then the flags that were given."""
    overrides: dict = {}
    for name, _, _ in _flag_fields(cls):
        value = getattr(args, name, None)
        if value is not None:
            node = overrides
            *parents, leaf = name.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    if getattr(args, "config", None):
        return load_config(cls, args.config, overrides)
    return config_from_dict(cls, overrides)


def parse_config(cls, argv: list[str] | None = None, description: str | None = None):
    """Parse `--config FILE --field value ...` (sys.argv by default) into a `cls` instance."""
    import argparse

    parser = argparse.ArgumentParser(description=description or cls.__doc__)
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))
