"""clipkit.config: the one strict reader, checked on every config dataclass the package holds.

The classes are found by walking the package (a dataclass named *Config, or whose every field has a
default), so a new config is read through the reader's checks the day it lands: unknown keys, wrong
types, NaN / inf and comment keys, nested configs included.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import clipkit
from clipkit.config import SAVED_METADATA, config_from_dict, load_config, parse_config, read_json_object, to_json

PACKAGE = Path(clipkit.__file__).parent


def _is_config(cls) -> bool:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    defaulted = all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING for f in fields
    )
    return cls.__name__.endswith("Config") or (bool(fields) and defaulted)


def _config_classes() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages([str(PACKAGE)], "clipkit."):
        if info.name.endswith("__main__"):  # running it is what importing it does
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == info.name
                and _is_config(obj)
            ):
                found[f"{info.name}.{obj.__qualname__}"] = obj
    return dict(sorted(found.items()))


CONFIGS = _config_classes()

# The least a config needs beyond its defaults to pass its own validate() / __post_init__.
# A new config whose defaults do not validate: add its minimal fields here.
MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 16, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1},
}
MINIMAL = {
    "ClipConfig": {"name": "tiny", "model_cfg": MODEL_CFG},
    "clipkit.evaluation.judge.JudgeConfig": {"classes": {"name": ["cat", "dog"]}},
    "clipkit.train.fit.FitConfig": {"train_data": "data/train", "out": "runs/fit"},
}


def _minimal(cls) -> dict:
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    base = MINIMAL.get(qualified, MINIMAL.get(cls.__name__, {}))
    names = {f.name for f in dataclasses.fields(cls)}
    return {**({"train_data": "data/{0..1}.tar"} if "train_data" in names else {}), **base}


def _arms(tp) -> list:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _fields(cls, want) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and any(want(a) for a in _arms(hints[f.name]))]


FLOAT_FIELDS = [(name, cls, f) for name, cls in CONFIGS.items() for f in _fields(cls, lambda a: a is float)]
NESTED_FIELDS = [
    (name, cls, f) for name, cls in CONFIGS.items() for f in _fields(cls, lambda a: dataclasses.is_dataclass(a))
]
ids = list(CONFIGS)


def test_the_walk_finds_the_configs_of_every_layer():
    names = {cls.__name__ for cls in CONFIGS.values()}
    assert {
        "ClipConfig",
        "DecoderConfig",
        "UpsamplerConfig",
        "PriorConfig",
        "ArPriorConfig",
        "TrainConfig",
        "ClipTrainConfig",
        "DecoderTrainConfig",
        "UpsamplerTrainConfig",
        "PriorTrainConfig",
        "ArPriorTrainConfig",
        "ServeConfig",
        "GenLabConfig",
        "SpiralLabConfig",
        "JudgeConfig",
    } <= names
    assert NESTED_FIELDS and FLOAT_FIELDS


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=ids)
def test_a_config_round_trips_through_json(cls):
    config = config_from_dict(cls, _minimal(cls))
    data = json.loads(json.dumps(to_json(config)))
    assert config_from_dict(cls, data) == config
    assert to_json(config_from_dict(cls, data)) == data


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=ids)
def test_an_unknown_key_is_refused_naming_it_and_the_valid_fields(cls):
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(
        ValueError,
        match=rf"unknown field\(s\) \['no_such_field'\] in {cls.__name__}; "
        rf"valid fields: \[.*'{first}'",
    ):
        config_from_dict(cls, {**_minimal(cls), "no_such_field": 1})


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=ids)
def test_description_and_underscore_keys_are_comments(cls):
    plain = config_from_dict(cls, _minimal(cls))
    assert config_from_dict(cls, {**_minimal(cls), "description": "what this is", "_why": [1, 2]}) == plain


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=ids)
def test_every_field_is_type_checked(cls):
    for f in dataclasses.fields(cls):
        if f.init:
            with pytest.raises(TypeError, match=rf"^{f.name} = <object object at .*>; expected "):
                config_from_dict(cls, {**_minimal(cls), f.name: object()})


@pytest.mark.parametrize("name,cls,field_name", FLOAT_FIELDS, ids=[f"{n}.{f}" for n, _, f in FLOAT_FIELDS])
def test_non_finite_numbers_are_refused(name, cls, field_name):
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf"^{field_name} = {bad!r}; expected a finite number"):
            config_from_dict(cls, {**_minimal(cls), field_name: bad})


@pytest.mark.parametrize("name,cls,field_name", NESTED_FIELDS, ids=[f"{n}.{f}" for n, _, f in NESTED_FIELDS])
def test_nested_configs_are_read_as_strictly(name, cls, field_name):
    inner_cls = next(a for a in _arms(typing.get_type_hints(cls)[field_name]) if dataclasses.is_dataclass(a))
    inner = {**to_json(getattr(config_from_dict(cls, _minimal(cls)), field_name)), "description": "a comment"}
    number = _fields(inner_cls, lambda a: a is int)[0]
    with pytest.raises(ValueError, match=rf"unknown field\(s\) \['bogus'\] in {field_name}; valid fields"):
        config_from_dict(cls, {**_minimal(cls), field_name: {"bogus": 1}})
    with pytest.raises(ValueError, match=rf"^{field_name}.{number} = nan; expected a finite number"):
        config_from_dict(cls, {**_minimal(cls), field_name: {**inner, number: math.nan}})
    with pytest.raises(TypeError, match=rf"^{field_name}.{number} = '4'; expected an integer"):
        config_from_dict(cls, {**_minimal(cls), field_name: {**inner, number: "4"}})
    nested = config_from_dict(cls, {**_minimal(cls), field_name: inner})
    assert isinstance(getattr(nested, field_name), inner_cls)
    assert to_json(getattr(nested, field_name)) == {k: v for k, v in inner.items() if k != "description"}


def test_no_other_reader_is_left():
    """One reader: no config class reads itself, and the package holds no second dict -> dataclass reader."""
    assert [name for name, cls in CONFIGS.items() if hasattr(cls, "from_json")] == []
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "config.py" and ("def from_json" in p.read_text() or "dataclass_from_json" in p.read_text())
    ]
    assert offenders == []


# ----------------------------------------------------------------------------- the reader's rules


@dataclass
class Inner:
    heads: int = 4
    channels: tuple[int, ...] = (8, 16)


@dataclass
class Outer:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    flag: bool = False
    limit: int | None = None
    size: tuple[int, int] = (32, 32)
    names: list[str] = field(default_factory=list)
    model: str | dict = "tiny"
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize(
    "bad,error,match",
    [
        ({"lr": "fast"}, TypeError, r"^lr = 'fast'; expected a number$"),
        ({"steps": 1.5}, TypeError, r"^steps = 1.5; expected an integer$"),
        ({"steps": True}, TypeError, r"^steps = True; expected an integer$"),
        ({"flag": 1}, TypeError, r"^flag = 1; expected true/false$"),
        ({"name": None}, TypeError, r"^name = null; expected a string$"),
        ({"limit": "3"}, TypeError, r"^limit = '3'; expected an integer or null$"),
        ({"size": [32]}, TypeError, r"^size = \[32\]; expected a list of 2 integers$"),
        ({"size": [32, "a"]}, TypeError, r"^size\[1\] = 'a'; expected an integer$"),
        ({"names": ["a", 3]}, TypeError, r"^names\[1\] = 3; expected a string$"),
        ({"model": 3}, TypeError, r"^model = 3; expected a string or an object$"),
        ({"inner": [1]}, TypeError, r"^inner = \[1\]; expected an object of Inner fields$"),
        ({"inner": {"channels": [8, 1.5]}}, TypeError, r"^inner.channels\[1\] = 1.5; expected an integer$"),
        ({"names": [math.nan]}, ValueError, r"^names\[0\] = nan; expected a finite number$"),
        ({"model": {"w": [math.inf]}}, ValueError, r"^model.w\[0\] = inf; expected a finite number$"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field_and_what_it_takes(bad, error, match):
    with pytest.raises(error, match=match):
        config_from_dict(Outer, bad)


def test_values_become_their_annotated_types():
    config = config_from_dict(
        Outer, {"lr": 1, "steps": 3.0, "size": [64, 48], "model": {"embed_dim": 8}, "inner": {"channels": [16, 32, 64]}}
    )
    assert (config.lr, config.steps, config.size, config.model) == (1.0, 3, (64, 48), {"embed_dim": 8})
    assert type(config.lr) is float and type(config.steps) is int and config.inner == Inner(4, (16, 32, 64))
    assert to_json(config)["inner"] == {"heads": 4, "channels": [16, 32, 64]}


def test_missing_required_fields_and_saved_metadata():
    @dataclass(frozen=True)
    class Saved:
        name: str
        width: int = 8

    with pytest.raises(ValueError, match=r"^Saved is missing the field\(s\) \['name'\]$"):
        config_from_dict(Saved, {"width": 4})
    data = {"name": "m", "kind": "decoder", "clipkit_version": "0.3.0", "identity": "m:abc"}
    assert config_from_dict(Saved, data, ignore=SAVED_METADATA) == Saved("m")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['clipkit_version', 'identity', 'kind'\]"):
        config_from_dict(Saved, data)


def test_files_overrides_and_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"description": "x", "lr": 0.01, "inner": {"heads": 2, "channels": [8, 8]}}))
    config = load_config(Outer, path, {"inner": {"heads": 8}})
    assert (config.lr, config.inner) == (0.01, Inner(8, (8, 8)))  # nested objects merge field by field
    flags = parse_config(
        Outer,
        [
            "--config",
            str(path),
            "--inner.channels",
            "16",
            "32",
            "--names",
            "1",
            "b",
            "--size",
            "64",
            "64",
            "--flag",
            "--limit",
            "null",
            "--model",
            "my.json",
        ],
    )
    assert (flags.inner.channels, flags.names, flags.size, flags.flag, flags.limit, flags.model) == (
        (16, 32),
        ["1", "b"],
        (64, 64),
        True,
        None,
        "my.json",
    )
    with pytest.raises(FileNotFoundError, match="config file '.*nope.json' does not exist"):
        load_config(Outer, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{'lr': 1}")
    with pytest.raises(ValueError, match="config file '.*bad.json' is not valid JSON"):
        read_json_object(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="holds a list; expected a JSON object"):
        load_config(Outer, tmp_path / "list.json")


def test_list_flags_of_booleans_are_booleans():
    """`--decoder.attention-levels false true` once gave [True, True] (bool('false')); now JSON reads them."""
    from clipkit.train.config import DecoderTrainConfig

    config = parse_config(
        DecoderTrainConfig,
        ["--train-data", "x", "--decoder.channels", "16", "32", "--decoder.attention-levels", "false", "true"],
    )
    assert (config.decoder.channels, config.decoder.attention_levels) == ((16, 32), (False, True))


# ----------------------------------------------------------------------------- model configs read strictly


def test_a_64px_decoder_is_a_config_away_and_builds_at_tiny_width():
    import torch

    from clipkit.unclip.config import DecoderConfig
    from clipkit.unclip.decoder import DecoderUNet

    data = {
        "embed_dim": 8,
        "image_size": 64,
        "patch_size": 2,
        "channels": [8, 16, 16, 16],
        "attention_levels": [False, False, False, True],
        "heads": 2,
        "context_tokens": 2,
    }
    config = config_from_dict(DecoderConfig, data)
    net = DecoderUNet(config).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x, torch.tensor([1, 500]), torch.nn.functional.normalize(torch.randn(2, 8), dim=-1))
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert net.conv_in.in_channels == 3 * 2 * 2 and net.mid[1].pos.shape == (1, (64 // 2 // 8) ** 2, 16)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"channels": [12, 24], "attention_levels": [False, True]}, r"channels=\[12, 24\]; .*multiple of 8"),
        ({"channels": [16, 24], "attention_levels": [False, True], "heads": 5}, r"heads=5 does not divide .*\[24\]"),
        (
            {"image_size": 40, "channels": [16, 32, 32, 32], "attention_levels": [False] * 4},
            r"image_size=40 .* 4 levels",
        ),
        ({"channels": [16, 32], "attention_levels": [True]}, r"attention_levels has 1 entries for 2 levels"),
        ({"schedule": "quadratic"}, r"schedule='quadratic' is not one of"),
        ({"low_res_size": 16}, r"low_res_size=16; a base decoder .*UpsamplerConfig"),
    ],
)
def test_decoder_constraints_are_checked_when_read(bad, match):
    from clipkit.unclip.config import DecoderConfig

    with pytest.raises(ValueError, match=match):
        config_from_dict(DecoderConfig, {"embed_dim": 8, **bad})


def test_the_upsampler_has_its_own_config_checked_when_its_recipe_is_read():
    from clipkit.train.config import UpsamplerTrainConfig
    from clipkit.unclip.config import DecoderConfig, UpsamplerConfig

    config = config_from_dict(
        UpsamplerTrainConfig,
        {"train_data": "x", "upsampler": {"channels": [16, 32], "attention_levels": [False, False]}},
    )
    assert isinstance(config.upsampler, UpsamplerConfig) and isinstance(config.upsampler, DecoderConfig)
    assert (config.upsampler.image_size, config.upsampler.low_res_size, config.upsampler.embed_dim) == (64, 32, 0)
    with pytest.raises(ValueError, match=r"^upsampler: low_res_size=64; an upsampler needs a low-resolution side"):
        config_from_dict(UpsamplerTrainConfig, {"train_data": "x", "upsampler": {"low_res_size": 64}})
    with pytest.raises(ValueError, match=r"^upsampler: channels=\[20, 40, 96\]"):
        config_from_dict(UpsamplerTrainConfig, {"train_data": "x", "upsampler": {"channels": [20, 40, 96]}})
    with pytest.raises(ValueError, match=r"upsampler.embed_dim=8; .*set embed_dim 0"):
        config_from_dict(UpsamplerTrainConfig, {"train_data": "x", "upsampler": {"embed_dim": 8}})


def test_a_clip_recipe_may_hold_its_architecture_inline():
    from clipkit.train.config import ClipTrainConfig

    config = config_from_dict(ClipTrainConfig, {"train_data": "x.tar", "model": MODEL_CFG})
    assert config.model == MODEL_CFG
    assert config_from_dict(ClipTrainConfig, json.loads(json.dumps(config.to_json()))) == config
