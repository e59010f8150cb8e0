"""The one error policy: every user-caused failure class, injected through the CLI, is one line naming the file
and the fix, exit 2 (never a traceback, exit 1); and the API refuses inputs that would return garbage.

FAILURES enumerates the classes (issue 25, class 4); each row makes its own broken input in a temporary folder.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

import clipkit
from clipkit.cli import main, user_error
from clipkit.io import (
    BadImageError,
    DamagedFileError,
    IncompleteOutputError,
    NonFiniteError,
    OutputError,
    OutputInUseError,
    UserError,
    WeightsMismatchError,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from clipkit.shapes.world import write_split

    root = tmp_path_factory.mktemp("shards")
    write_split(root, split="val", num=8, seed=1, shard_size=8)
    return root


def _train(shards, out, *extra) -> list[str]:
    return [
        "train",
        "--train-data",
        str(shards),
        "--model",
        "shapes-tiny",
        "--batch-size",
        "4",
        "--no-progress",
        "--out-dir",
        str(out),
        *extra,
    ]


def _no_manifest_copy(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    (copy / "manifest.json").unlink()  # a folder saved before manifests, or copied without one
    return copy


def _damaged_header(path):
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _pickled(path):
    from safetensors.torch import load

    state = load(path.read_bytes())  # in memory: the file is rewritten below (a mmap would SIGBUS)
    torch.save(state, path)  # what a renamed torch.save checkpoint looks like


def _embed(model) -> list[str]:
    return ["embed", "--model", str(model), "--texts", "{texts}", "--out", "{out}"]


def _bomb(tmp_path):
    from tests.test_verified_reads import bomb_png

    return bomb_png(tmp_path / "bomb.png")


def case_nonfinite_loss(ctx, tmp_path):
    return _train(ctx["shards"], tmp_path / "run", "--lr", "1e30", "--max-steps", "4", "--warmup-steps", "0"), "nan"


def case_full_disk_interpolate(ctx, tmp_path, monkeypatch):
    import clipkit.io.weights as weights

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "save_file", full)
    return [
        "interpolate",
        str(ctx["model"]),
        str(ctx["model"]),
        "--alpha",
        "0.5",
        "--out",
        str(tmp_path / "mix"),
    ], "model.safetensors: no space left on the device"


def case_full_disk_checkpoint(ctx, tmp_path, monkeypatch):
    import clipkit.io.weights as weights

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "save_file", full)
    return _train(
        ctx["shards"], tmp_path / "run", "--max-steps", "1", "--checkpoint-every", "1"
    ), "model.safetensors: no space left on the device"


def case_damaged_weights_without_manifest(ctx, tmp_path):
    model = _no_manifest_copy(ctx["model"], tmp_path)
    _damaged_header(model / "model.safetensors")
    return _embed(model), "is damaged or not safetensors"


def case_pickled_weights_without_manifest(ctx, tmp_path):
    model = _no_manifest_copy(ctx["model"], tmp_path)
    _pickled(model / "model.safetensors")
    return _embed(model), "is a pickle (torch.save), which clipkit never unpickles"


def case_damaged_pipeline_weights(ctx, tmp_path):
    pipe = tmp_path / "pipe"
    shutil.copytree(ctx["pipe"], pipe)
    (pipe / "decoder" / "manifest.json").unlink()
    _damaged_header(pipe / "decoder" / "model.safetensors")
    return ["generate", "--pipeline", str(pipe), "--prompt", "x", "--out", "{out}"], "is damaged or not safetensors"


def case_pickled_pipeline_weights(ctx, tmp_path):
    pipe = tmp_path / "pipe"
    shutil.copytree(ctx["pipe"], pipe)
    _pickled(pipe / "decoder" / "model.safetensors")  # with its manifest: the size changed too
    return ["generate", "--pipeline", str(pipe), "--prompt", "x", "--out", "{out}"], "decoder"


def case_tensor_shape_mismatch(ctx, tmp_path):
    model = _no_manifest_copy(ctx["model"], tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["model_cfg"]["embed_dim"] = 32  # the weights are 64-wide
    (model / "config.json").write_text(json.dumps(config))
    return _embed(model), "do not fit this model (size mismatch"


def case_resume_with_another_model(ctx, tmp_path):
    assert main(_train(ctx["shards"], tmp_path / "run", "--max-steps", "1")) == 0
    return _train(
        ctx["shards"], tmp_path / "run", "--max-steps", "2", "--resume", "latest", "--model", "shapes-small"
    ), "shapes"


def case_bomb_in_search_image(ctx, tmp_path):
    return ["search", str(ctx["idx"]), "--image", str(_bomb(tmp_path))], "decompression bomb"


def case_foreign_unclip_json(ctx, tmp_path):
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "unclip.json").write_text(json.dumps({"name": "someone else's pipeline", "stages": 3}))
    return [
        "train-prior",
        "--clip",
        str(ctx["model"]),
        "--train-data",
        str(ctx["shards"]),
        "--num-samples",
        "8",
        "--val-samples",
        "2",
        "--max-steps",
        "1",
        "--no-progress",
        "--out-dir",
        str(tmp_path / "run"),
        "--pipeline-dir",
        str(pipe),
    ], "is not a clipkit unCLIP pipeline manifest"


def case_busy_output(ctx, tmp_path):
    from clipkit.io import output_lock

    out = tmp_path / "emb"
    ctx["stack"].enter_context(output_lock(out))  # held by "another writer" (re-entrancy is per process: clear it)
    from clipkit.io import outputs

    outputs._HELD.discard(str(outputs.lock_path_for(out).absolute()))
    return _embed(ctx["model"])[:-1] + [str(out)], "is being written by another process"


FAILURES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, shards, tiny_model, tiny_model_dir):
    from clipkit.unclip import DecoderConfig, DecoderUNet, UnCLIP

    root = tmp_path_factory.mktemp("ctx")
    torch.manual_seed(0)
    decoder = DecoderUNet(
        DecoderConfig(
            embed_dim=tiny_model.embed_dim, channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2
        )
    )
    UnCLIP(tiny_model, decoder, clip_path=str(tiny_model_dir)).save(root / "pipe")
    assert (
        main(["embed", "--model", str(tiny_model_dir), "--texts", str(_texts(root)), "--out", str(root / "emb")]) == 0
    )
    assert main(["index", "build", str(root / "emb"), str(root / "idx")]) == 0
    return {"shards": shards, "model": tiny_model_dir, "pipe": root / "pipe", "idx": root / "idx"}


def _texts(root):
    path = root / "texts.txt"
    path.write_text("a red circle\na blue star\n")
    return path


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_every_user_failure_class_is_one_line_exit_2(name, ctx, tmp_path, capsys, monkeypatch):
    import contextlib
    import inspect

    fn = FAILURES[name]
    with contextlib.ExitStack() as stack:
        context = {**ctx, "stack": stack}
        argv, words = (
            fn(context, tmp_path, monkeypatch)
            if "monkeypatch" in inspect.signature(fn).parameters
            else fn(context, tmp_path)
        )
        argv = [a.format(texts=_texts(tmp_path), out=tmp_path / "out") for a in argv]
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line or "Traceback" in line]
    assert rc == 2, (name, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, (name, err[-2000:])
    assert words in lines[0], (name, lines[0])
    assert not (tmp_path / "out").exists()


def test_serve_port_out_of_range_is_refused_at_parse_time(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--index", "idx", "--port", "70000"])
    assert info.value.code == 2 and "expected a TCP port from 1 to 65535" in capsys.readouterr().err


def test_every_user_error_type_is_one_line():
    """Every UserError subclass (found, not listed) and every errno the policy knows prints as one line."""
    import clipkit.train.runtime  # noqa: F401  (defines NonFiniteLossError)
    from clipkit.cli.main import _OS_FIXES

    def subclasses(cls):
        return {cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))}

    found = subclasses(UserError) - {UserError}
    assert found >= {
        OutputError,
        IncompleteOutputError,
        OutputInUseError,
        DamagedFileError,
        WeightsMismatchError,
        BadImageError,
        NonFiniteError,
        clipkit.train.runtime.NonFiniteLossError,
    }
    for cls in found:
        assert issubclass(cls, (ValueError, RuntimeError, OSError)), cls  # `except ValueError` keeps working
        assert user_error(cls("'x.bin' is damaged; save it again")) == "'x.bin' is damaged; save it again", cls
    for code, fix in _OS_FIXES.items():
        assert user_error(OSError(code, "whatever", "/data/out.bin")) == f"/data/out.bin: {fix}"
    assert user_error(KeyError("a bug")) is None


def test_ctrl_c_prints_the_commands_own_hint(monkeypatch, capsys):
    import clipkit.cli.commands.embed as embed
    import clipkit.cli.commands.train as train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    monkeypatch.setattr(embed, "run", interrupted)
    assert main(["train", "--train-data", "x"]) == 130
    err = capsys.readouterr().err
    assert "--resume latest" in err and "embed" not in err
    assert main(["embed", "--model", "m", "--texts", "t", "--out", "o"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def _leaf_commands(parser, prefix=()):
    """(command words, its parser) for every runnable (sub)command."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_commands(sub, (*prefix, name))


def _minimal_argv(words, parser) -> list[str]:
    """The command with a placeholder for each required argument its parser accepts."""
    import argparse

    def value(action):
        if action.choices:
            return [str(next(iter(action.choices)))]
        for candidate in ("1", "x", "0.5"):
            try:
                (action.type or str)(candidate)
                return [candidate] * (action.nargs if isinstance(action.nargs, int) else 1)
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                continue
        raise AssertionError(f"no placeholder for {action.dest} of {words}")

    argv = list(words)
    grouped = {a for g in parser._mutually_exclusive_groups for a in g._group_actions}
    for group in parser._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            argv += [first.option_strings[0], *value(first)] if first.option_strings else value(first)
    for action in parser._actions:
        if action in grouped or not (action.required or not action.option_strings) or action.dest == "help":
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        argv += [action.option_strings[0], *value(action)] if action.option_strings else value(action)
    return argv


def test_ctrl_c_in_every_command_prints_its_own_hint(monkeypatch, capsys):
    """Every command, interrupted: exit 130, one line, and the hint its own parser set (never another command's);
    a hint that says --resume belongs to a command that has --resume."""
    import importlib

    from clipkit.cli import build_parser

    cli_main = importlib.import_module("clipkit.cli.main")  # the module (clipkit.cli.main is also a function)

    def interrupted(args):
        raise KeyboardInterrupt

    seen = 0
    for words, _ in _leaf_commands(build_parser()):
        parser = build_parser()
        target = parser
        for word in words:
            target = next(a for a in target._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
        target.set_defaults(func=interrupted)
        monkeypatch.setattr(cli_main, "build_parser", lambda p=parser: p)
        argv = _minimal_argv(words, target)
        assert cli_main.main(argv) == 130, argv
        err = capsys.readouterr().err.strip()
        hint = target.get_default("interrupted_hint")
        assert err == f"clipkit {words[0]}: interrupted; outputs are as they were" + (f" ({hint})" if hint else ""), err
        if hint and "--resume" in hint:
            assert any("--resume" in a.option_strings for a in target._actions), words
        seen += 1
    assert seen >= 20


def test_eval_recall_k_must_be_positive(capsys):
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit) as info:
            main(["eval", "--model", "m", "--dataset", "d", "--recall-k", "1", bad])
        assert info.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- API inputs (class 7)


def test_encode_images_refuses_non_finite_pixels(tiny_model):
    batch = torch.zeros(3, 3, 32, 32)
    batch[1, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or inf pixels \\(the first in image 1\\)"):
        tiny_model.encode_images(batch)
    batch[1] = float("inf")
    with pytest.raises(ValueError, match="image 1"):
        tiny_model.encode_images(batch)
    assert torch.isfinite(tiny_model.encode_images(torch.zeros(2, 3, 32, 32))).all()


def test_encode_images_refuses_empty_images_in_one_line(tiny_model, tmp_path):
    from PIL import Image

    with pytest.raises(BadImageError, match=r"images\[1\]: the image is 0x0 pixels"):
        tiny_model.encode_images([Image.new("RGB", (4, 4)), Image.new("RGB", (0, 0))])
    with pytest.raises(ValueError, match=r"images\[0\]: array of shape \(0, 5, 3\) has no pixels"):
        tiny_model.encode_images([np.zeros((0, 5, 3), np.uint8)])
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(BadImageError, match="junk.png.*damaged or not an image"):
        tiny_model.encode_images([str(tmp_path / "junk.png")])


def test_a_damaged_model_file_names_itself_through_the_api(tiny_model_dir, tmp_path):
    model = _no_manifest_copy(tiny_model_dir, tmp_path)
    _pickled(model / "model.safetensors")
    with pytest.raises(DamagedFileError, match="model.safetensors' is a pickle"):
        clipkit.load(model)


@pytest.fixture(scope="module")
def api(tiny_model):
    """A vector, a flat index of 40 rows and an HNSW one, for the API tables below."""
    from clipkit.retrieval.index.core import EmbeddingIndex

    x = tiny_model.encode_texts([f"a red circle number {i}" for i in range(40)]).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 4 tuning queries cannot prove recall 0.95
        hnsw = EmbeddingIndex.build(x, kind="hnsw", num_queries=4)
    return {"x": x, "flat": EmbeddingIndex.build(x, kind="flat"), "hnsw": hnsw}


def _api_garbage(model, api, tmp_path):
    """Public API calls with inputs that once returned garbage or crashed -> (exception, words of its one line)."""
    from PIL import Image

    from clipkit.retrieval.arithmetic import ExpressionError, evaluate_expression, nearest_words

    nan = np.full(model.embed_dim, np.nan, np.float32)

    def damaged_stage_marker(content: str):
        from clipkit.io.stages import MARKER, run_stage

        folder = tmp_path / f"stage-{len(content)}"
        folder.mkdir()
        (folder / MARKER).write_text(content)
        return run_stage("clip", folder, lambda: pytest.fail("a finished stage ran again"))

    return {
        "create(None)": (lambda: clipkit.create(None), TypeError, "model=None (NoneType); expected"),
        "load(None)": (lambda: clipkit.load(None), TypeError, "clipkit.load(None): got NoneType"),
        "encode_images(NaN tensor)": (
            lambda: model.encode_images(torch.full((1, 3, 32, 32), float("nan"))),
            NonFiniteError,
            "NaN or inf pixels",
        ),
        "encode_images(0x0 image)": (
            lambda: model.encode_images([Image.new("RGB", (0, 0))]),
            BadImageError,
            "0x0 pixels",
        ),
        "nearest_words(NaN vector)": (lambda: nearest_words(model, nan), ValueError, "NaN/inf"),
        "EmbeddingIndex.search(NaN query)": (lambda: api["flat"].search(nan[None]), ValueError, "NaN or inf"),
        "EmbeddingIndex.search_text('')": (lambda: api["flat"].search_text(model, ""), ValueError, "is empty"),
        "EmbeddingIndex.search_text(blank)": (lambda: api["flat"].search_text(model, "  "), ValueError, "is empty"),
        "run_stage(cut done.json)": (lambda: damaged_stage_marker('{"summary": '), DamagedFileError, "stage marker"),
        "run_stage(done.json not a record)": (
            lambda: damaged_stage_marker("[1, 2]"),
            DamagedFileError,
            "not a stage record",
        ),
        "evaluate_expression(NaN stored vector)": (
            lambda: evaluate_expression(model, 'img:"7"', images={"7": nan}),
            ExpressionError,
            "NaN / inf",
        ),
    }


def test_api_inputs_that_made_garbage_are_refused_in_one_line(tiny_model, api, tmp_path):
    for name, (call, error, words) in _api_garbage(tiny_model, api, tmp_path).items():
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value) and "Traceback" not in str(info.value), (name, str(info.value))
        assert user_error(info.value) is not None, name  # the CLI prints it as one line


def _counts(model, api, tmp_path):
    """Every public function taking a count -> a call with that count (NumPy integers are counts too)."""
    from clipkit.data.folders import image_batches
    from clipkit.retrieval.arithmetic import nearest_words
    from clipkit.retrieval.embeddings.writer import write_embeddings
    from clipkit.retrieval.index.pieces import build_in_pieces

    runs = iter(range(1000))
    return {
        "ClipModel.encode_texts(batch_size)": lambda n: model.encode_texts(["a", "b"], batch_size=n),
        "ClipModel.encode_images(batch_size)": lambda n: model.encode_images(torch.zeros(2, 3, 32, 32), batch_size=n),
        "nearest_words(k)": lambda n: nearest_words(model, api["x"][0], k=n),
        "EmbeddingIndex.search(k)": lambda n: api["flat"].search(api["x"][:1], k=n),
        "EmbeddingIndex.set_search_params(efSearch)": lambda n: api["hnsw"].set_search_params(efSearch=n),
        "image_batches(batch_size)": lambda n: list(image_batches([], n)),
        "write_embeddings(batch_size)": lambda n: write_embeddings(
            model, tmp_path / f"e{next(runs)}", texts=["a"], batch_size=n, progress=False
        ),
        "write_embeddings(part_size)": lambda n: write_embeddings(
            model, tmp_path / f"e{next(runs)}", texts=["a"], part_size=n, progress=False
        ),
        "build_in_pieces(pieces)": lambda n: build_in_pieces(api["x"], pieces=n, kind="flat"),
    }


def test_every_count_takes_numpy_integers_and_refuses_the_rest(tiny_model, api, tmp_path):
    """`nearest_words(k=np.int64(3))` was refused: each count of the public API takes an int or a NumPy integer
    (what array code hands back) and refuses 0, negatives, bools, floats and strings in one line."""
    for call in _counts(tiny_model, api, tmp_path).values():
        for good in (2, np.int64(2), np.int32(2)):
            call(good)
        for bad in (0, -3, np.int64(0), True, 2.5, "2"):
            with pytest.raises(ValueError, match="expected a positive int"):
                call(bad)
    from clipkit.retrieval.arithmetic import nearest_words

    assert len(nearest_words(tiny_model, api["x"][0], k=np.int64(3))) == 3


def test_search_refuses_an_empty_text_like_the_server(ctx, capsys):
    for text in ("", "   "):
        assert main(["search", str(ctx["idx"]), "--text", text]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is empty; give words to search for" in err


def test_every_time_budget_reads_one_duration_syntax():
    """--time-budget means wall-clock training time in every command: 45m, 1h30m, 90s or seconds, one parser."""
    from clipkit.cli.main import build_parser

    found = []
    for words, parser in _leaf_commands(build_parser()):
        for action in parser._actions:
            if "--time-budget" in action.option_strings:
                found.append(" ".join(words))
                assert action.type("45m") == 2700 and action.type("1h30m") == 5400, words
                assert action.type("90") == 90 and action.type("2.5") == 2.5, words
                for bad in ("soon", "0", "-5m"):
                    with pytest.raises(argparse.ArgumentTypeError, match="duration|time"):
                        action.type(bad)
    # the training commands and the one-command fit all take it
    assert {"fit", "train", "train-decoder", "train-prior", "judge train"} <= set(found), found
