"""The one strict reader of every config dataclass: dicts, JSON files and command-line flags.

    config = config_from_dict(DecoderConfig, {"image_size": 64, "channels": [32, 64, 64, 64], ...})
    config = load_config(DecoderTrainConfig, "cfg.json", {"lr": 1e-3})          # a file + overrides
    config = parse_config(DecoderTrainConfig, ["--config", "cfg.json", "--decoder.channels", "32", "64"])
    data = to_json(config)                   # plain JSON data; config_from_dict(type(config), data) == config

Strict on purpose, for a model config read back beside its weights as for a
training recipe a person typed: an unknown key, a value of the wrong type or a
non-finite number raises ValueError / TypeError naming the field (`decoder.heads`)
and what it takes. The annotations are the schema: bool, int, float, str, list,
tuple (`tuple[int, ...]`, `tuple[int, int]`), dict, unions (`int | None`,
`str | dict`) and nested dataclasses, given as a JSON object of their fields. Keys
starting with "_" and "description" are comments. After building, a config's
`validate()` (if it has one) runs; frozen model configs check themselves in
`__post_init__`. Torch-free: `clipkit --help` builds its flags from these classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Keys a saved model's config.json carries beside its dataclass fields (readers pass them as `ignore`).
SAVED_METADATA = frozenset({"kind", "clipkit_version", "identity"})


def is_comment(key: str) -> bool:
    """ "description" and keys starting with "_" annotate a config file; the reader skips them."""
    return key == "description" or key.startswith("_")


def config_from_dict(cls, data: Mapping, what: str | None = None, *, ignore: Iterable[str] = ()):
    """Build the dataclass `cls` from `data`; unknown keys, wrong types and NaN / inf raise, naming the field.

    what: the field this config sits in (errors read `decoder.heads`); ignore: top-level keys to skip
    (a saved model's metadata, SAVED_METADATA)."""
    label = what or cls.__name__
    if not isinstance(data, Mapping):
        raise TypeError(f"{label} = {_show(data)}; expected a JSON object of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    ignore = set(ignore)
    unknown = sorted(k for k in data if k not in fields and not is_comment(str(k)) and k not in ignore)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {label}; valid fields: {sorted(fields)}")
    missing = sorted(
        n
        for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{label} is missing the field(s) {missing}")
    hints = typing.get_type_hints(cls)
    prefix = f"{what}." if what else ""
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items() if k in fields}
    try:
        config = cls(**kwargs)
        if callable(getattr(config, "validate", None)):
            config.validate()
    except (ValueError, TypeError) as e:
        if what is None:
            raise
        raise type(e)(f"{what}: {e}") from e
    return config


def load_config(cls, path: str | os.PathLike, overrides: Mapping | None = None):
    """A config from a JSON file plus overrides (nested objects merge field by field)."""
    return config_from_dict(cls, _merge(read_json_object(path, "config file"), overrides or {}))


def read_json_object(path: str | os.PathLike, what: str = "config file") -> dict:
    """The JSON object in `path`; a missing file, bad JSON or another JSON type is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} holds a {type(data).__name__}; expected a JSON object")
    return data


def to_json(config) -> dict:
    """A (nested) config dataclass as plain JSON data: tuples become lists, nested configs objects."""

    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def _merge(base: Mapping, overrides: Mapping) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ----------------------------------------------------------------------------- types


def _arms(tp) -> tuple[list, bool]:
    """(the non-None types of an annotation, may it be None?): `int | None` -> ([int], True)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], tp is type(None)


def describe(tp) -> str:
    """An annotation in words, for error messages: `int | None` -> 'an integer or null'."""
    arms, optional = _arms(tp)
    words = [_describe_one(a) for a in arms] + (["null"] if optional else [])
    return " or ".join(words)


def _describe_one(tp) -> str:
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"an object of {tp.__name__} fields"
    if origin in (list, tuple):
        if len(args) == 2 and args[1] is Ellipsis or (origin is list and len(args) == 1):
            return f"a list of {_plural(args[0])}"
        if args:
            return f"a list of {len(args)} {_plural(args[0])}"
        return "a list"
    return {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "an object",
        Any: "any value",
    }.get(origin, repr(tp))


def _plural(tp) -> str:
    return {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}.get(tp, "values")


def _coerce(name: str, tp, value):
    _check_finite(name, value)
    arms, optional = _arms(tp)
    if value is None:
        if optional or Any in arms:
            return None
        raise TypeError(f"{name} = null; expected {describe(tp)}")
    for arm in arms:
        try:
            return _coerce_one(name, arm, value)
        except _WrongType:
            continue
    raise TypeError(f"{name} = {_show(value)}; expected {describe(tp)}")


class _WrongType(Exception):
    """The value is not of this annotation (another arm of a union may take it)."""


def _coerce_one(name: str, tp, value):
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _WrongType
        return config_from_dict(tp, value, what=name)
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if origin is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise _WrongType
        return int(value)
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _WrongType
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise _WrongType
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _WrongType
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, int]: a fixed length
            if len(value) != len(args):
                raise _WrongType
            items = [_coerce(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value))]
        elif args:  # list[int], tuple[int, ...]
            items = [_coerce(f"{name}[{i}]", args[0], v) for i, v in enumerate(value)]
        else:
            items = list(value)
        return tuple(items) if origin is tuple else items
    raise TypeError(
        f"config field {name!r} has the annotation {tp!r}, which clipkit.config cannot read; "
        f"use bool, int, float, str, list, tuple, dict, a union of them or a dataclass"
    )


def _check_finite(name: str, value) -> None:
    """NaN and infinities are refused anywhere in a value (JSON has no such numbers; Python's json writes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} = {value!r}; expected a finite number")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(f"{name}[{i}]", v)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(f"{name}.{k}", v)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- command line

_DURATION = re.compile(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*")
_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """'45m', '1h30m', '90s', '2700' or '2700.5' -> seconds (> 0); ValueError naming the text otherwise. The one
    reading of a wall-clock duration: every --time-budget flag (clipkit fit, train, judge train, ...) uses it."""
    parts = _DURATION.fullmatch(text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"{text!r} is not a duration; expected e.g. 45m, 1h30m, 90s or 2700 (seconds)")
    seconds = sum(float(v) * _UNITS[u] for v, u in zip(parts.groups(), "hms") if v)
    if not seconds > 0:
        raise ValueError(f"{text!r} is no time at all; expected a duration > 0 such as 45m")
    return seconds


def _flag_fields(cls, prefix: str = ""):
    """(dotted name, annotation, default) for every field, the fields of nested dataclasses included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        arms, _ = _arms(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            assert callable(f.default_factory), f"{cls.__name__}.{f.name} has no default"
            default = f.default_factory()
        if len(arms) == 1 and dataclasses.is_dataclass(arms[0]):
            yield from _flag_fields(arms[0], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name], default


def _flag_type(tp):
    """What a flag's text becomes: the one scalar of the annotation, or str where a union holds one."""
    arms, _ = _arms(tp)
    bases = [typing.get_origin(a) or a for a in arms]
    if str in bases:
        return str
    return bases[0]


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """`--config FILE` and one `--field-name VALUE` flag per field (`--model.field` for nested ones)."""
    parser.add_argument("--config", help="JSON config file (flags below override its fields)")
    group = parser.add_argument_group(f"{cls.__name__} fields (override the config file)")
    for name, tp, default in _flag_fields(cls):
        base = _flag_type(tp)
        optional = _arms(tp)[1]
        flag = "--" + name.replace("_", "-")
        help_ = f"[{default}]"
        if base is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif base in (list, tuple):
            group.add_argument(flag, dest=name, nargs="*", default=None, help=help_)
        else:
            duration = name.rsplit(".", 1)[-1] == "time_budget"  # seconds, or 45m / 1h30m as everywhere

            def parse(text, _base=base, _optional=optional, _flag=flag, _duration=duration):
                if _optional and text.lower() in ("none", "null"):
                    return None
                if _duration:
                    try:
                        return parse_duration(text)
                    except ValueError as e:
                        raise argparse.ArgumentTypeError(f"{_flag} {e}") from None
                try:
                    value = _base(text)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"{_flag} {text!r}: expected {_base.__name__}") from None
                if _base is float and not math.isfinite(value):
                    raise argparse.ArgumentTypeError(f"{_flag} {text!r}: expected a finite number")
                return value

            metavar = "DURATION" if duration else base.__name__.upper()
            group.add_argument(flag, dest=name, type=parse, default=None, metavar=metavar, help=help_)


def config_from_args(cls, args: argparse.Namespace):
    """Parsed flags (from add_config_arguments) -> a config: the file first, then the flags that were given."""
    overrides: dict = {}
    for name, tp, _ in _flag_fields(cls):
        value = getattr(args, name, None)
        if value is not None:
            if _flag_type(tp) in (list, tuple):
                value = [_list_item(v, tp) for v in value]
            node = overrides
            *parents, leaf = name.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    if getattr(args, "config", None):
        return load_config(cls, args.config, overrides)
    return config_from_dict(cls, overrides)


def _list_item(text: str, tp):
    """A list flag's item: text for a list of strings, else as JSON reads it (`--decoder.channels 32 64` ->
    [32, 64], `true` -> True), falling back to the text."""
    args = typing.get_args(_arms(tp)[0][0])
    if args and args[0] is str:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_config(cls, argv: list[str] | None = None, description: str | None = None):
    """Parse `--config FILE --field value ...` (sys.argv by default) into a `cls` instance."""
    parser = argparse.ArgumentParser(description=description or cls.__doc__)
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))
