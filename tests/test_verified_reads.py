"""Readers verify what they read, and one bad file never stops a folder run.

Readers (READERS enumerates them: model, unCLIP pipeline, embedding folder, index, training checkpoint): damage
of the same size (zeroed bytes, reordered rows), which a size check cannot see, is refused with one line naming
the file, because every reader checks the sha256 its manifest records; `verify=False` is the explicit opt-out.

Folders (FOLDER_READERS, checked against the parser): a junk file and a decompression bomb in an image folder are
skipped and counted by every command that reads folders, as a corrupt sample in a shard is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import clipkit
from clipkit.cli import build_parser, main
from clipkit.io import MANIFEST_NAME, DamagedFileError, write_json, write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


def bomb_png(path: Path, side: int = 12_000) -> Path:
    """A 400-byte PNG that claims side x side pixels (144 MP for 12,000: over the 89.5 MP limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1) * 2))
        + chunk(b"IEND", b"")
    )
    return path


def _zero_tail(path: Path, n: int = 4096) -> None:
    """Same size, other bytes: the last n bytes (tensor data, vectors) set to zero."""
    data = bytearray(path.read_bytes())
    n = min(n, len(data) // 2)
    data[-n:] = b"\0" * n
    path.write_bytes(bytes(data))


def _swap_rows(path: Path) -> None:
    """An embedding part with its first two rows swapped: same size, same values, other order."""
    arr = np.load(path)
    arr[[0, 1]] = arr[[1, 0]]
    np.save(path, arr)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model, tiny_model_dir, shapes_dir):
    """One of each thing a reader reads, written by clipkit."""
    import torch

    from clipkit.unclip import DecoderConfig, DecoderUNet, UnCLIP

    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    decoder = DecoderUNet(
        DecoderConfig(
            embed_dim=tiny_model.embed_dim, channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2
        )
    )
    UnCLIP(tiny_model, decoder, clip_path=str(tiny_model_dir)).save(root / "pipe")
    assert (
        main(
            [
                "embed",
                "--model",
                str(tiny_model_dir),
                "--shards",
                str(shapes_dir / "holdout" / "00000.tar"),
                "--out",
                str(root / "emb"),
            ]
        )
        == 0
    )
    assert main(["index", "build", str(root / "emb"), str(root / "idx"), "--kind", "flat"]) == 0
    ckpt = root / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_model_dir / "model.safetensors", ckpt / "model.safetensors")
    torch.save({"optimizer": {}, "scheduler": None}, ckpt / "trainer.pt")
    write_json(ckpt / "rng.json", {"ranks": []})
    write_json(ckpt / "state.json", {"step": 1})
    write_manifest(
        ckpt,
        "clipkit-checkpoint",
        {n: None for n in ("model.safetensors", "trainer.pt", "rng.json", "state.json")},
        step=1,
    )
    return {
        "model": tiny_model_dir,
        "pipe": root / "pipe",
        "emb": root / "emb",
        "idx": root / "idx",
        "checkpoint": ckpt,
    }


def _resume(path: Path, verify=True):
    from clipkit.train.checkpoint import CheckpointManager

    return CheckpointManager(path.parent).resume(str(path), None, None, None, None)  # refused before any use


def _index(path: Path, verify=True):
    from clipkit.retrieval.index.core import EmbeddingIndex

    return EmbeddingIndex.load(path, verify=verify)


def _folder(path: Path, verify=True):
    from clipkit.retrieval.embeddings.reader import EmbeddingFolder

    return EmbeddingFolder(path, verify=verify)


# reader -> (what to copy from `saved`, the damaged file inside it, damage, the reader (path, verify), a CLI command
# reading it, whether that command has --no-verify)
READERS = {
    "model": (
        "model",
        "model.safetensors",
        _zero_tail,
        lambda p, verify=True: clipkit.load(p, verify=verify),
        ["embed", "--model", "{}", "--texts", "{texts}", "--out", "{out}"],
        False,
    ),
    "unclip pipeline": (
        "pipe",
        "decoder/model.safetensors",
        _zero_tail,
        lambda p, verify=True: clipkit.UnCLIP.load(p, verify=verify),
        ["generate", "--pipeline", "{}", "--expr", 'text:"x"', "--num", "1", "--steps", "1", "--out", "{out}"],
        False,
    ),
    "embedding folder": (
        "emb",
        "img_emb/img_emb_00000.npy",
        _swap_rows,
        _folder,
        ["index", "build", "{}", "{out}"],
        True,
    ),
    "index": ("idx", "index.faiss", _zero_tail, _index, ["search", "{}", "--text", "a red circle"], True),
    "checkpoint": ("checkpoint", "model.safetensors", _zero_tail, _resume, None, False),
}
OPT_OUT = sorted(name for name, row in READERS.items() if row[3] is not _resume)  # readers with verify=False


def _damaged_copy(reader: str, saved: dict, tmp_path: Path) -> Path:
    source, rel, damage, *_ = READERS[reader]
    copy = tmp_path / Path(saved[source]).name
    shutil.copytree(saved[source], copy)
    size = (copy / rel).stat().st_size
    damage(copy / rel)
    assert (copy / rel).stat().st_size == size  # a size check sees nothing
    return copy


@pytest.mark.parametrize("reader", sorted(READERS))
def test_same_size_damage_is_refused_by_every_reader(reader, saved, tmp_path, capsys):
    _, rel, _, read, argv, _ = READERS[reader]
    copy = _damaged_copy(reader, saved, tmp_path)
    with pytest.raises(DamagedFileError, match=f"{Path(rel).name} has another sha256 than the manifest records"):
        read(copy)
    if argv is not None:
        texts = tmp_path / "t.txt"
        texts.write_text("a red circle\n")
        rc = main([w.format(copy, texts=texts, out=tmp_path / "out") for w in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and "has another sha256" in err[-1] and Path(rel).name in err[-1], err
        assert not any("Traceback" in line for line in err) and sum("error:" in line for line in err) == 1
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("reader", OPT_OUT)
def test_verify_false_is_the_explicit_opt_out(reader, saved, tmp_path, capsys):
    """The opt-out for very large reads (verify=False; --no-verify on the commands reading embedding folders and
    indexes) skips the hash and keeps the size check; then same-size damage goes unseen (which is why
    verification is the default)."""
    _, rel, _, read, argv, flag = READERS[reader]
    copy = _damaged_copy(reader, saved, tmp_path)
    assert read(copy, verify=False) is not None
    if flag:
        rc = main([w.format(copy, out=tmp_path / "out") for w in argv] + ["--no-verify"])
        assert rc == 0, capsys.readouterr().err
    with open(copy / rel, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="bytes, the manifest says"):
        read(copy, verify=False)


# Arguments naming an index or an embedding folder (reads that can be very large): each command with one offers
# --no-verify, found from the parser.
LARGE_READ_DESTS = {"index", "emb_dir", "search"}


def test_every_command_reading_indexes_or_embedding_folders_offers_no_verify():
    found = {}

    def walk(p, prefix):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
        if any(a.dest in LARGE_READ_DESTS for a in p._actions):
            found[" ".join(prefix)] = any("--no-verify" in a.option_strings for a in p._actions)

    walk(build_parser(), [])
    assert set(found) >= {"search", "serve", "arith", "index build", "index add"}
    assert all(found.values()), f"no --no-verify: {sorted(k for k, v in found.items() if not v)}"


def test_the_cost_of_verifying_is_the_hash_alone(saved, monkeypatch):
    """A verified index load hashes each file once and parses it once (no second pass, no re-hash)."""
    from clipkit.io import outputs

    hashed = []
    real = outputs.sha256_file
    monkeypatch.setattr(outputs, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    index = _index(saved["idx"])
    assert sorted(hashed) == sorted(json.loads((saved["idx"] / MANIFEST_NAME).read_text())["parts"])
    hashed.clear()
    assert len(_index(saved["idx"], verify=False)) == len(index) and hashed == []


def test_pipeline_models_carry_manifests(saved):
    manifest = json.loads((saved["pipe"] / "decoder" / MANIFEST_NAME).read_text())
    assert manifest["format"] == "clipkit-unclip-decoder" and manifest["kind"] == "decoder"
    assert set(manifest["parts"]) == {"config.json", "model.safetensors"}
    assert all(len(r["sha256"]) == 64 for r in manifest["parts"].values())


# ----------------------------------------------------------------------------- folders: skip, count, report

# Argument names that read an image folder; FOLDER_READERS must have a row for each command that has one.
FOLDER_DESTS = {"images", "labelled_folder", "dataset", "root"}
FOLDER_READERS = {
    ("embed", "--images"): ["embed", "--model", "{model}", "--images", "{images}", "--out", "{out}"],
    ("zero-shot", "--images"): [
        "zero-shot",
        "--model",
        "{model}",
        "--images",
        "{images}",
        "--labels",
        "red,blue",
        "--out",
        "{out}",
    ],
    ("zero-shot", "--labelled-folder"): [
        "zero-shot",
        "--model",
        "{model}",
        "--labelled-folder",
        "{labelled}",
        "--json",
        "{out}",
    ],
    ("eval", "--dataset"): ["eval", "--model", "{model}", "--dataset", "{labelled}", "--output", "{out}"],
    ("export-benchmark", "root"): ["export-benchmark", "{labelled}", "--out", "{out}"],
    ("judge score", "--images"): [
        "judge",
        "score",
        "--judge",
        "{judge}",
        "--images",
        "{images}",
        "--labels",
        "{labels}",
        "--real-data",
        "{real}",
        "--candidates",
        "4",
        "--out",
        "{out}",
    ],
    ("interpolate", "--dataset"): [
        "interpolate",
        "{model}",
        "{model}",
        "--sweep",
        "0",
        "1",
        "--dataset",
        "{labelled}",
        "--out",
        "{out}",
    ],
}


def test_every_folder_reading_argument_has_an_entry():
    found = set()

    def walk(p, prefix):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
            elif action.dest in FOLDER_DESTS:
                found.add((" ".join(prefix), action.option_strings[0] if action.option_strings else action.dest))

    walk(build_parser(), [])
    assert found == set(FOLDER_READERS), f"add rows for {sorted(found - set(FOLDER_READERS))}"


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory, shapes_dir):
    """4 good images, a junk .png and a decompression-bomb .png, as a folder and as a labelled folder."""
    from clipkit.shapes.world import generate

    root = tmp_path_factory.mktemp("folders")
    samples = list(generate("val", 4, seed=3))
    for where in ("images", "labelled/red", "labelled/blue"):
        (root / where).mkdir(parents=True)
    for i, s in enumerate(samples):
        s.image.save(root / "images" / f"{i}.png")
        s.image.save(root / "labelled" / ("red" if i % 2 else "blue") / f"{i}.png")
    for folder in (root / "images", root / "labelled" / "red"):
        (folder / "junk.png").write_bytes(b"this is not a png at all")
        bomb_png(folder / "zbomb.png")
    names = [*(f"{i}.png" for i in range(4)), "junk.png", "zbomb.png"]
    (root / "labels.csv").write_text(
        "file,shape\n" + "".join(f"{n},{s.attributes.shape}\n" for n, s in zip(names, samples + samples))
    )
    assert (
        main(
            [
                "judge",
                "train",
                "--train-data",
                str(shapes_dir / "val"),
                "--label-field",
                "shape",
                "--max-steps",
                "1",
                "--val-samples",
                "8",
                "--precision",
                "no",
                "--out",
                str(root / "judge"),
            ]
        )
        == 0
    )
    return root


@pytest.mark.parametrize("key", sorted(FOLDER_READERS), ids=lambda k: f"{k[0]} {k[1]}")
def test_one_bad_file_never_stops_a_folder_run(key, bad_folders, tiny_model_dir, shapes_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        w.format(
            model=tiny_model_dir,
            images=bad_folders / "images",
            labelled=bad_folders / "labelled",
            out=out,
            judge=bad_folders / "judge",
            labels=bad_folders / "labels.csv",
            real=shapes_dir / "val",
        )
        for w in FOLDER_READERS[key]
    ]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    said = captured.out + captured.err
    if key[0] == "embed":
        from clipkit.retrieval.embeddings.reader import EmbeddingFolder

        folder = EmbeddingFolder(out)
        assert folder.count == 4 and "skipped 2 unreadable samples" in said
        assert folder.info["skipped"] == {"bad_image": 1, "too_large": 1}  # by reason, as the others
    elif key == ("zero-shot", "--images"):
        assert len(out.read_text().splitlines()) == 1 + 4 and "bad_image: 1, too_large: 1" in said
    elif key == ("zero-shot", "--labelled-folder"):
        assert json.loads(out.read_text())["n"] == 4 and "bad_image: 1, too_large: 1" in said
    elif key[0] == "eval":
        row = json.loads(out.read_text())
        assert row["num_samples"] == 4 and row["skipped"] == {"bad_image": 1, "too_large": 1}
    elif key[0] == "judge score":
        report = json.loads(out.read_text())
        assert report["num_images"] == 4 and report["skipped"] == {"bad_image": 1, "too_large": 1}
        assert "bad_image: 1, too_large: 1" in said
    elif key[0] == "export-benchmark":
        assert "wrote 4 samples" in said and "bad_image: 1, too_large: 1" in said
        assert (out / "test" / "nshards.txt").read_text().strip() == "1"
    else:
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [r["num_samples"] for r in rows] == [4, 4]
        assert all(r["skipped"] == {"bad_image": 1, "too_large": 1} for r in rows)


def test_the_folder_reader_counts_by_reason(bad_folders, tmp_path):
    from collections import Counter

    from clipkit.data.folders import image_batches, list_images, skipped_note

    paths = list_images(bad_folders / "images") + [str(tmp_path / "gone.png")]
    skipped = Counter()
    batches = list(image_batches(paths, 3, skipped))
    assert [len(b[0]) for b in batches] == [3, 1]
    assert [i for b in batches for i in b[0]] == [0, 1, 2, 3]  # indices into `paths`, junk left out
    assert skipped == {"bad_image": 1, "too_large": 1, "missing": 1}
    assert skipped_note(skipped) == "skipped 3 unusable images (bad_image: 1, missing: 1, too_large: 1)"
