"""The output contract, enumerated from the CLI parser: every command with an output argument refuses a
user's file, a user's folder and its own input, leaving every byte as it was; every lock it takes refuses
a symbolic link; a model comes out with the umask's modes; a writer killed with -9 leaves no temp for good.

New commands are covered without anyone remembering to: `test_every_output_argument_has_an_entry` fails
for an output argument (found by name in the parser) that has no row in OUTPUTS.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clipkit.cli import build_parser, main
from clipkit.io import FILES_MARKER, OUTPUT_MARKER, lock_path_for
from clipkit.io import outputs as io_outputs

pytestmark = pytest.mark.usefixtures("one_thread")

# Argument names that are outputs, wherever they appear (options and positionals).
OUTPUT_DESTS = {"out", "out_dir", "output", "pipeline_dir", "export_dir", "save", "grid", "json", "confusion"}

# The words of the one refusal rule (clipkit.io.check_output_path), one of which every refusal must say.
REFUSALS = (
    "refusing to replace it",
    "is the same path as the input",
    "is inside the input",
    "contains the input",
    "this output is a file",
)


def output_arguments(parser: argparse.ArgumentParser) -> set[tuple[str, str]]:
    """{(command, argument)} for every output argument of every (sub)command, e.g. ("index build", "OUT")."""
    found = set()

    def walk(p, prefix):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
            elif action.dest in OUTPUT_DESTS:
                found.add((" ".join(prefix), action.option_strings[0] if action.option_strings else action.metavar))

    walk(parser, [])
    return found


# ----------------------------------------------------------------------------- tiny inputs, made once


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model, tiny_model_dir):
    """Tiny inputs for every command: shards, a model, texts, embeddings, an index, image and labelled
    folders, an unCLIP pipeline. Made once; every test checks that no command changed them."""
    import torch

    from clipkit.shapes.world import generate, write_split
    from clipkit.unclip import DecoderConfig, DecoderUNet, DiffusionPrior, PriorConfig, UnCLIP

    root = tmp_path_factory.mktemp("inputs")
    write_split(root / "shards", split="val", num=8, seed=1, shard_size=8)
    (root / "texts.txt").write_text("a red circle\na blue square\n")
    samples = list(generate("val", 4, seed=2))
    (root / "images").mkdir()
    for i, s in enumerate(samples):
        s.image.save(root / "images" / f"{i}.png")
    for i, s in enumerate(samples):
        folder = root / "labelled" / ("red" if i % 2 else "blue")
        folder.mkdir(parents=True, exist_ok=True)
        s.image.save(folder / f"{i}.png")
    assert (
        main(
            [
                "embed",
                "--model",
                str(tiny_model_dir),
                "--shards",
                str(root / "shards" / "00000.tar"),
                "--out",
                str(root / "emb"),
            ]
        )
        == 0
    )
    assert main(["index", "build", str(root / "emb"), str(root / "idx"), "--kind", "flat"]) == 0
    torch.manual_seed(0)
    decoder = DecoderUNet(
        DecoderConfig(
            embed_dim=tiny_model.embed_dim, channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2
        )
    )
    prior = DiffusionPrior(PriorConfig(embed_dim=tiny_model.embed_dim, width=32, layers=1, heads=2))
    UnCLIP(tiny_model, decoder, prior, clip_path=str(tiny_model_dir)).save(root / "pipe")
    (root / "theme" / "64x64" / "apps").mkdir(parents=True)
    (root / "theme" / "64x64" / "apps" / "text-editor.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="40" height="40" fill="red"/></svg>'
    )
    return {
        "THEME": str(root / "theme"),
        "root": root,
        "SHARDS": str(root / "shards"),
        "MODEL": str(tiny_model_dir),
        "TEXTS": str(root / "texts.txt"),
        "EMB": str(root / "emb"),
        "IDX": str(root / "idx"),
        "IMAGES": str(root / "images"),
        "IMAGE": str(root / "images" / "0.png"),
        "LABELLED": str(root / "labelled"),
        "PIPE": str(root / "pipe"),
    }


# (command, output argument) -> argv with "OUT" where the output goes, the input that (c) writes to (a key of
# `env`, or a path template with it), and whether a fresh run is cheap enough to run here (seconds).
OUTPUTS = {
    ("shapes", "--out"): (["shapes", "--out", "OUT", "--num", "4", "--shard-size", "4"], None, True),
    ("demo", "--out"): (["demo", "--out", "OUT", "--quick"], None, False),
    ("fit", "--out"): (
        ["fit", "--train-data", "SHARDS", "--out", "OUT", "--max-steps", "1", "--num-samples", "8"],
        "SHARDS",
        False,
    ),
    ("icons", "--out"): (["icons", "--theme", "THEME", "--out", "OUT", "--renders-per-icon", "2"], "THEME", False),
    ("embed", "--out"): (["embed", "--model", "MODEL", "--texts", "TEXTS", "--out", "OUT"], "TEXTS", True),
    ("index build", "OUT"): (["index", "build", "EMB", "OUT", "--kind", "flat"], "EMB", True),
    ("search", "--grid"): (["search", "IDX", "--image", "IMAGE", "-k", "2", "--grid", "OUT"], "IMAGE", True),
    ("zero-shot", "--out"): (
        ["zero-shot", "--model", "MODEL", "--images", "IMAGES", "--labels", "red,blue", "--out", "OUT"],
        "IMAGES",
        True,
    ),
    ("zero-shot", "--confusion"): (
        ["zero-shot", "--model", "MODEL", "--labelled-folder", "LABELLED", "--confusion", "OUT"],
        "LABELLED",
        True,
    ),
    ("zero-shot", "--json"): (
        ["zero-shot", "--model", "MODEL", "--labelled-folder", "LABELLED", "--json", "OUT"],
        "LABELLED",
        True,
    ),
    ("eval", "--output"): (["eval", "--model", "MODEL", "--dataset", "LABELLED", "--output", "OUT"], "LABELLED", True),
    ("export-benchmark", "--out"): (["export-benchmark", "LABELLED", "--out", "OUT"], "LABELLED", True),
    ("interpolate", "--out"): (["interpolate", "MODEL", "MODEL", "--alpha", "0.5", "--out", "OUT"], "MODEL", True),
    ("arith", "--save"): (
        ["arith", 'text:"a red circle"', "--search", "IDX", "-k", "1", "--words", "0", "--save", "OUT"],
        "IDX/inside.npy",
        True,
    ),
    ("spiral", "--out"): (["spiral", "--out", "OUT", "--quick"], None, False),
    ("gen-lab", "--out"): (["gen-lab", "--out", "OUT", "--quick", "--prior-clip", "MODEL"], "MODEL", False),
    ("generate", "--out"): (
        ["generate", "--pipeline", "PIPE", "--prompt", "a red circle", "--num", "1", "--steps", "1", "--out", "OUT"],
        "PIPE",
        True,
    ),
    ("judge train", "--out"): (
        [
            "judge",
            "train",
            "--train-data",
            "SHARDS",
            "--label-field",
            "shape",
            "--max-steps",
            "1",
            "--val-samples",
            "2",
            "--out",
            "OUT",
        ],
        "SHARDS",
        False,
    ),
    ("judge score", "--out"): (
        [
            "judge",
            "score",
            "--judge",
            "MODEL",
            "--images",
            "IMAGES",
            "--labels",
            "TEXTS",
            "--real-data",
            "SHARDS",
            "--out",
            "OUT",
        ],
        "IMAGES",
        False,
    ),
    ("train", "--out-dir"): (
        [
            "train",
            "--train-data",
            "SHARDS",
            "--model",
            "shapes-tiny",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
            "--out-dir",
            "OUT",
        ],
        "SHARDS",
        True,
    ),
    ("train", "--export-dir"): (
        [
            "train",
            "--train-data",
            "SHARDS",
            "--model",
            "shapes-tiny",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
            "--out-dir",
            "RUN",
            "--export-dir",
            "OUT",
        ],
        "SHARDS",
        False,
    ),
    **{
        (cmd, arg): (
            [
                cmd,
                "--clip",
                "MODEL",
                "--train-data",
                "SHARDS",
                "--num-samples",
                "8",
                "--val-samples",
                "2",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--no-progress",
                *(["--out-dir", "OUT"] if arg == "--out-dir" else ["--out-dir", "RUN", "--pipeline-dir", "OUT"]),
            ],
            "MODEL",
            (cmd, arg) == ("train-prior", "--pipeline-dir"),
        )
        for cmd in ("train-decoder", "train-prior", "train-upsampler", "train-ar-prior")
        for arg in ("--out-dir", "--pipeline-dir")
    },
}
# Outputs written in place, with no --overwrite: `index add IDX EMB` grows an existing index (it is found by its
# name, not by OUTPUT_DESTS); each refuses anything that is not an index of ours with its own one line.
IN_PLACE = {
    ("index add", "IDX"): (
        ["index", "add", "OUT", "EMB"],
        "EMB",
        ("has no manifest.json", "is a file, not a folder", "not a clipkit-index"),
    )
}


def _argv(template: list[str], env: dict, out: Path, run: Path | None = None) -> list[str]:
    def fill(word: str) -> str:
        if word == "OUT":
            return str(out)
        if word == "RUN":
            return str(run or out.parent / "run")
        return re.sub(r"\b(" + "|".join(k for k in env if k.isupper()) + r")\b", lambda m: env[m.group(1)], word)

    return [fill(w) for w in template]


def _tree(*roots: Path) -> dict[str, str]:
    """Every path under the roots -> sha256 of its bytes (files), its target (links) or 'dir'."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


def test_every_output_argument_has_an_entry():
    found = output_arguments(build_parser())
    missing = sorted(found - set(OUTPUTS) - set(IN_PLACE))
    assert not missing, f"commands with an output argument but no row in OUTPUTS (add one): {missing}"
    stale = sorted(set(OUTPUTS) - found)
    assert not stale, f"rows in OUTPUTS for arguments the parser no longer has: {stale}"
    # every command that writes can be told to replace what is not its own
    parser = build_parser()
    for command, _ in OUTPUTS:
        sub = parser
        for word in command.split():
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        assert any("--overwrite" in a.option_strings for a in sub._actions), f"`clipkit {command}` has no --overwrite"


def _user_file(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "notes.txt").write_text("my notes")
    return where / "notes.txt"


def _user_folder(where: Path) -> Path:
    folder = where / "photos"
    folder.mkdir(parents=True)
    (folder / "holiday.jpg").write_bytes(b"my photo")
    return folder


@pytest.mark.parametrize("key", sorted(OUTPUTS) + sorted(IN_PLACE), ids=lambda k: f"{k[0]} {k[1]}")
def test_outputs_refuse_user_files_folders_and_their_inputs(key, env, tmp_path, capsys):
    template, own_input, *rest = OUTPUTS.get(key) or IN_PLACE[key]
    words = rest[0] if key in IN_PLACE else REFUSALS
    cases = {"a user's file": _user_file(tmp_path / "a"), "a user's folder with a file": _user_folder(tmp_path / "b")}
    if own_input is not None:
        cases["its own input"] = Path(_argv([own_input], env, tmp_path)[0])
    for case, out in cases.items():
        before = _tree(tmp_path, env["root"])
        rc = main(_argv(template, env, out, run=tmp_path / "run"))
        err = capsys.readouterr().err.strip()
        assert rc == 2, (key, case, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (key, case, err)
        assert any(w in err for w in words), (key, case, err)
        assert _tree(tmp_path, env["root"]) == before, (key, case)


CHEAP = sorted(k for k, (_, _, cheap) in OUTPUTS.items() if cheap)


@pytest.fixture
def lock_spy(monkeypatch):
    """The lock files taken during the test: every lock is clipkit.io.outputs.output_lock, which names its
    file with the module's lock_path_for (wherever output_lock was imported from)."""
    taken = []
    real = io_outputs.lock_path_for

    def spy(path):
        taken.append(real(path))
        return taken[-1]

    monkeypatch.setattr(io_outputs, "lock_path_for", spy)
    return taken


@pytest.mark.parametrize("key", CHEAP, ids=lambda k: f"{k[0]} {k[1]}")
def test_a_fresh_output_is_written_then_recognised_as_ours(key, env, tmp_path, capsys, lock_spy):
    """The table's arguments are valid (exit 0), a second run replaces its own output without --overwrite,
    and every lock the command takes refuses a symbolic link planted at its name in a copy of that output
    (the victim keeps its bytes; the link is refused before it is opened)."""
    template, _, _ = OUTPUTS[key]
    out = tmp_path / "first" / "out.x"
    assert main(_argv(template, env, out)) == 0, capsys.readouterr().err
    assert out.exists()
    assert main(_argv(template, env, out)) == 0, capsys.readouterr().err  # ours: no --overwrite needed
    locks = sorted({p.relative_to(tmp_path / "first") for p in lock_spy})
    assert locks, f"{key} took no lock"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for rel in locks:
        again = tmp_path / f"again-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tmp_path / "first", again, symlinks=True)  # our output: the run goes on to each lock
        os.symlink(victim, again / rel)
        capsys.readouterr()
        rc = main(_argv(template, env, again / "out.x"))
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "is a symbolic link" in err and len(err.splitlines()) == 1, (key, rel, err)  # at once
        assert victim.read_text() == "precious" and (again / rel).is_symlink()


def test_overwrite_replaces_a_user_folder_and_a_user_file(env, tmp_path, capsys):
    folder = _user_folder(tmp_path)
    assert main(["index", "build", env["EMB"], str(folder), "--kind", "flat", "--overwrite"]) == 0
    assert not (folder / "holiday.jpg").exists() and (folder / "manifest.json").is_file()
    notes = _user_file(tmp_path / "n")
    assert (
        main(
            [
                "zero-shot",
                "--model",
                env["MODEL"],
                "--images",
                env["IMAGES"],
                "--labels",
                "red,blue",
                "--out",
                str(notes),
                "--overwrite",
            ]
        )
        == 0
    )
    assert notes.read_text().startswith("path,label,probability")
    notes.write_text(notes.read_text() + "my own line\n")  # edited by the user: theirs again
    capsys.readouterr()
    assert (
        main(
            [
                "zero-shot",
                "--model",
                env["MODEL"],
                "--images",
                env["IMAGES"],
                "--labels",
                "red,blue",
                "--out",
                str(notes),
            ]
        )
        == 2
    )
    assert "refusing to replace it" in capsys.readouterr().err and notes.read_text().endswith("my own line\n")


# ----------------------------------------------------------------------------- the library writers


def test_library_writers_claim_like_the_cli(env, tiny_model, tmp_path):
    """ClipModel.save and UnCLIP.save (the root cause of `interpolate --out DIR` deleting a folder)."""
    import clipkit
    from clipkit.io import OutputError

    folder = _user_folder(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(OutputError, match="refusing to replace it"):
        tiny_model.save(folder)
    with pytest.raises(OutputError, match="is the same path as the input"):
        tiny_model.save(env["MODEL"], inputs=[env["MODEL"]])
    pipe = clipkit.UnCLIP.load(env["PIPE"])
    with pytest.raises(OutputError, match="refusing to replace it"):
        pipe.save(folder)
    (tmp_path / "P" / "prior").mkdir(parents=True)
    (tmp_path / "P" / "prior" / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match="refusing to replace it"):
        pipe.save(tmp_path / "P")  # P/prior/ holds a file clipkit did not write
    assert (tmp_path / "P" / "prior" / "mine.txt").read_text() == "mine"
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith(str(tmp_path / "P"))} == before
    tiny_model.save(tmp_path / "m")
    tiny_model.save(tmp_path / "m")  # ours: replaced whole
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "open_clip_config.json",
    ]


# ----------------------------------------------------------------------------- locks


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "foreign file", "fifo"])
def test_a_lock_file_we_did_not_create_is_never_written(plant, tmp_path):
    from clipkit.io import OutputError, output_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = lock_path_for(tmp_path / "OUT")
    {
        "symlink": lambda: os.symlink(victim, lock),
        "hardlink": lambda: os.link(victim, lock),
        "foreign file": lambda: lock.write_text("precious too"),
        "fifo": lambda: os.mkfifo(lock),
    }[plant]()
    with pytest.raises(OutputError, match="clipkit did not make it"):
        with output_lock(tmp_path / "OUT"):
            pass
    assert victim.read_text() == "precious" and os.path.lexists(lock)
    if plant == "foreign file":
        assert lock.read_text() == "precious too"


def test_index_build_with_a_symlinked_lock_is_one_line(env, tmp_path, capsys):
    """The issue's reproduction: `ln -s victim.txt .OUT.lock; clipkit index build e OUT` truncated victim.txt."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, lock_path_for(tmp_path / "OUT"))
    assert main(["index", "build", env["EMB"], str(tmp_path / "OUT")]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert victim.read_text() == "precious" and not (tmp_path / "OUT").exists()


# ----------------------------------------------------------------------------- temporaries, modes


def test_a_temp_left_by_kill_9_is_removed_at_the_next_write(tmp_path):
    """A writer killed between creating its temporary sibling and renaming it leaves `.NAME~PID~HOST~*.tmp`;
    the next write of the same path removes it (and nothing else: a live writer's, another name's)."""
    code = (
        "import os, sys, time; from clipkit.io import atomic_file\n"
        f"with atomic_file({str(tmp_path / 'model.safetensors')!r}) as f:\n"
        "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and f"~{proc.pid}~" in stale[0].name
    other = tmp_path / f".other.bin~{proc.pid}~x~abc.tmp"  # another name: not ours to remove
    other.write_bytes(b"")
    live = tmp_path / f".model.safetensors~{os.getpid()}~{stale[0].name.split('~')[2]}~abcdefgh.tmp"
    live.write_bytes(b"")  # a live writer's (this process)
    from clipkit.io import write_json

    write_json(tmp_path / "model.safetensors", {"ok": True})
    assert not stale[0].exists() and other.exists() and live.exists()


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_models_and_pipelines_honour_the_umask(umask, tiny_model, env, tmp_path):
    import clipkit

    old = os.umask(umask)
    try:
        tiny_model.save(tmp_path / "m")
        clipkit.UnCLIP.load(env["PIPE"]).save(tmp_path / "p")
    finally:
        os.umask(old)
    files = [*(tmp_path / "m").iterdir(), *(tmp_path / "p" / "decoder").iterdir(), tmp_path / "p" / "unclip.json"]
    assert {p.name for p in files} >= {"model.safetensors", "config.json", "manifest.json", "unclip.json"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    for p in (tmp_path / "m", tmp_path / "p", tmp_path / "p" / "decoder"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask, p


def test_markers_name_what_wrote_the_output(env, tmp_path, capsys):
    """Folders of loose files carry .clipkit-output.json; single files are recorded in .clipkit-files.json."""
    import json

    out = tmp_path / "pred.csv"
    assert (
        main(
            ["zero-shot", "--model", env["MODEL"], "--images", env["IMAGES"], "--labels", "red,blue", "--out", str(out)]
        )
        == 0
    )
    record = json.loads((tmp_path / FILES_MARKER).read_text())["files"]["pred.csv"]
    assert record["format"] == "clipkit-zero-shot-predictions"
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert main(["export-benchmark", env["LABELLED"], "--out", str(tmp_path / "bench")]) == 0
    assert json.loads((tmp_path / "bench" / OUTPUT_MARKER).read_text())["format"] == "clipkit-benchmark"


# ----------------------------------------------------------------------------- kill -9 at every step of a staged write

# Where a writer can die inside staged_output (ClipModel.save here; every staged writer shares the steps), made
# to happen by replacing that step with os._exit(9) in a child process that saves over a previous model.
KILL_POINTS = {
    "creating the staging folder": "import clipkit.io.outputs as m; m.write_json = lambda *a, **k: os._exit(9)",
    "writing the parts": "import clipkit.io.weights as m; m.save_file = lambda *a, **k: os._exit(9)",
    "publishing, before the swap": "import clipkit.io.outputs as m; m._swap_into_place = lambda *a: os._exit(9)",
    "publishing, after the swap": "import clipkit.io.files as m; m._remove = lambda *a: os._exit(9)",
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_writer_killed_at_any_step_leaves_nothing_the_next_write_refuses(point, tiny_model, tmp_path):
    """What a killed writer left (a staging folder with or without its marker, a temporary sibling, its lock) is
    recognised and removed by the next write of the same output; the output is always a complete model."""
    import clipkit

    out = tmp_path / "m"
    tiny_model.save(out)
    code = f"import os, clipkit\n{KILL_POINTS[point]}\nclipkit.create('shapes-tiny', seed=0).save({str(out)!r})\n"
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == 9, child.stderr[-2000:]  # it died at that step
    assert len(os.listdir(tmp_path)) > 1  # and left something beside `m`
    assert clipkit.load(out).identity == tiny_model.identity  # the output is complete meanwhile
    tiny_model.save(out)  # the next write: not refused
    assert sorted(os.listdir(tmp_path)) == ["m"]  # and nothing is left for good
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "open_clip_config.json",
    ]


# ----------------------------------------------------------------------------- outputs by default, outputs beside OUT


def _optional_outputs() -> list[tuple[str, str]]:
    """Cheap rows of OUTPUTS whose output option may be left out (the command then writes to a default path,
    or nothing)."""
    parser = build_parser()
    optional = []
    for key in sorted(k for k, (_, _, cheap) in OUTPUTS.items() if cheap and k[1].startswith("--")):
        sub = parser
        for word in key[0].split():
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        if not next(a for a in sub._actions if key[1] in a.option_strings).required:
            optional.append(key)
    return optional


def _bookkeeping(p: Path) -> bool:
    return p.name.startswith((".clipkit-", ".")) and (p.name.endswith((".lock", ".json")))


def test_outputs_written_to_default_paths_are_claimed_like_given_ones(env, tmp_path, monkeypatch, capsys):
    """Each command run without its (optional) output argument, in an empty working directory: whatever it
    writes there is an output of ours (a marked folder, a manifest, a recorded file), and a user's file or
    folder at each such path is refused with its bytes kept (zero-shot's predictions.csv, train's run folder)."""
    from clipkit.io import output_owner

    defaults = {}
    for key in _optional_outputs():
        template = list(OUTPUTS[key][0])
        at = template.index(key[1])
        template[at : at + 2] = []
        cwd = tmp_path / f"cwd-{len(defaults)}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        argv = _argv(template, env, tmp_path / "unused", run=tmp_path / f"run-{len(defaults)}")
        assert main(argv) == 0, (key, capsys.readouterr().err)
        ours = [p for p in sorted(cwd.rglob("*")) if output_owner(p) or output_owner(p, "file")]
        top = [p for p in ours if not any(q in p.parents for q in ours)]
        written = [p for p in cwd.rglob("*") if p.is_file() and not _bookkeeping(p)]
        assert all(any(q == p or q in p.parents for q in top) for p in written), (key, written, top)
        defaults[key] = [p.relative_to(cwd) for p in top]
        for rel in defaults[key]:
            for plant in (_user_file, _user_folder):
                again = tmp_path / f"again-{len(list(tmp_path.iterdir()))}"
                target = again / rel
                made = plant(target.parent)
                made.rename(target)
                before = _tree(again, env["root"])
                monkeypatch.chdir(again)
                capsys.readouterr()
                rc = main(argv)
                err = capsys.readouterr().err.strip()
                assert rc == 2 and len(err.splitlines()) == 1 and any(w in err for w in REFUSALS), (key, rel, err)
                assert _tree(again, env["root"]) == before, (key, rel)
    assert defaults[("zero-shot", "--out")] == [Path("predictions.csv")]
    assert defaults[("train", "--out-dir")] == [Path("runs/train")]


# Paths a writer uses beside its output OUT: its lock, its staging folder, `index build --on-disk`'s work folder.
SIDE_PATHS = {
    "lock": lock_path_for,
    "staging folder": io_outputs.partial_dir_for,
    "pieces work folder": lambda out: out.parent / f".{out.name}.pieces",
}


@pytest.mark.parametrize("side", sorted(SIDE_PATHS))
def test_a_users_folder_at_a_side_path_is_refused_before_any_work(side, env, tmp_path, capsys):
    out = tmp_path / "OUT"
    folder = _user_folder(tmp_path)
    folder.rename(SIDE_PATHS[side](out))
    before = _tree(tmp_path, env["root"])
    rc = main(
        [
            "index",
            "build",
            env["EMB"],
            str(out),
            "--kind",
            "ivf",
            "--train-on",
            "8",
            "--pieces",
            "2",
            "--on-disk",
            "--overwrite",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and SIDE_PATHS[side](out).name in err, err
    assert "clipkit did not make it" in err or "was not made by clipkit" in err, err
    assert _tree(tmp_path, env["root"]) == before and not out.exists()
