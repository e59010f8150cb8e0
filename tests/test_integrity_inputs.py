"""Hostile inputs and paths: outputs colliding with user files and with inputs, NaN / inf vectors and
options, truncated and empty shards, damaged index folders, one-line CLI errors, locks, the umask."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import stat
import subprocess
import tarfile

import numpy as np
import pytest

from clipkit.cli import main, user_error
from clipkit.io import OutputInUseError, lock_path_for, output_lock
from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.retrieval.embeddings.writer import write_embeddings
from clipkit.retrieval.index.core import EmbeddingIndex

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def emb(tmp_path_factory, shapes_dir, tiny_model):
    out = tmp_path_factory.mktemp("e") / "emb"
    write_embeddings(
        tiny_model, out, shards=str(shapes_dir / "val" / "00000.tar"), progress=False, model_source="shapes-tiny"
    )
    return out


def _tree(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- never delete what we did not write


def test_index_build_refuses_outputs_that_collide_with_its_input(emb, tmp_path, capsys):
    before = _tree(emb)
    for out, words in (
        (emb, "is the same path as the input"),
        (emb / "idx", "is inside the input"),
        (emb.parent, "contains the input"),
    ):
        assert main(["index", "build", str(emb), str(out)]) == 2
        assert words in capsys.readouterr().err
    assert _tree(emb) == before and EmbeddingFolder(emb).count == 200


def test_user_files_are_never_replaced_without_overwrite(emb, tmp_path, capsys):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"my photo")
    afile = tmp_path / "notes.txt"
    afile.write_text("my notes")
    for argv in (
        ["index", "build", str(emb), str(user)],
        ["index", "build", str(emb), str(afile)],
        ["embed", "--model", "shapes-tiny", "--texts", str(afile), "--out", str(user)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refusing to replace it" in err and "--overwrite" in err
    assert (user / "holiday.jpg").read_bytes() == b"my photo" and afile.read_text() == "my notes"
    # with --overwrite the folder is replaced, and only by a complete index
    assert main(["index", "build", str(emb), str(user), "--overwrite"]) == 0
    assert len(EmbeddingIndex.load(user)) == 200 and not (user / "holiday.jpg").exists()
    # a previous index is replaced without --overwrite (same kind of output)
    assert main(["index", "build", str(emb), str(user), "--kind", "flat"]) == 0


def test_embed_overwrite_checks_inputs_before_touching_anything(emb, tmp_path, shapes_dir, capsys):
    out = tmp_path / "e"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(emb, out)
    before = _tree(out)
    assert (
        main(
            [
                "embed",
                "--model",
                "shapes-tiny",
                "--shards",
                str(tmp_path / "missing.tar"),
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        == 2
    )
    assert "missing.tar' does not exist" in capsys.readouterr().err
    assert _tree(out) == before
    # the same arguments as the existing output: nothing to do, nothing touched
    assert (
        main(["embed", "--model", "shapes-tiny", "--shards", str(shapes_dir / "val" / "00000.tar"), "--out", str(out)])
        == 0
    )
    assert _tree(out) == before


def test_damaged_or_mixed_embedding_folders_are_refused(emb, tmp_path):
    import shutil

    for damage, words in (
        (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
        (lambda d: (d / "img_emb" / "img_emb_00000.npy").write_bytes(b"x" * 10), "does not match its manifest"),
        (
            lambda d: shutil.copy(d / "img_emb" / "img_emb_00000.npy", d / "img_emb" / "img_emb_00007.npy"),
            "which its manifest does not list",
        ),
        (lambda d: (d / "manifest.json").write_text("{not json"), "is not valid JSON"),
    ):
        d = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(emb, d)
        damage(d)
        with pytest.raises(ValueError, match=words):
            EmbeddingFolder(d)
        with pytest.raises(ValueError, match=words):
            EmbeddingIndex.build(d)


def test_damaged_index_folders_are_one_line_errors(emb, tmp_path, capsys):
    import shutil

    idx = tmp_path / "idx"
    assert main(["index", "build", str(emb), str(idx)]) == 0
    capsys.readouterr()

    def zeroed(d):
        (d / "index.faiss").write_bytes(b"\0" * (d / "index.faiss").stat().st_size)

    cases = {
        "garbage index.faiss": (zeroed, "index.faiss has another sha256 than the manifest records", []),
        "garbage index.faiss unverified": (zeroed, "is not a readable FAISS index", ["--no-verify"]),
        "cut index.faiss": (
            lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100]),
            "does not match its manifest.json",
            [],
        ),
        "short metadata": (lambda d: (d / "metadata.parquet").write_bytes(b""), "does not match its manifest.json", []),
        "no manifest": (lambda d: (d / "manifest.json").unlink(), "has no manifest.json", []),
    }
    for name, (damage, words, extra) in cases.items():
        d = tmp_path / name.replace(" ", "_")
        shutil.copytree(idx, d)
        damage(d)
        assert main(["search", str(d), "--text", "a red circle", *extra]) == 2, name
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)


# ----------------------------------------------------------------------------- one writer at a time


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    import sys

    out = tmp_path / "out"
    with output_lock(out):
        holder = json.loads(lock_path_for(out).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with output_lock(out):  # re-entrant in one process (load, add, save)
            pass
        assert lock_path_for(out).is_file()
    assert not lock_path_for(out).exists()
    code = (
        f"import sys, time; from clipkit.io import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=f"pid {other.pid} on {socket.gethostname()}"):
            with output_lock(out):
                pass
    finally:
        other.kill()  # dies holding the lock: its file stays behind
        other.wait()
    assert json.loads(lock_path_for(out).read_text())["pid"] == other.pid
    with output_lock(out):  # the holder died: its lock is taken over
        assert json.loads(lock_path_for(out).read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------- finite numbers


def test_non_finite_vectors_are_refused_with_count_and_first_row(tiny_model):
    x = np.random.default_rng(0).standard_normal((500, 64)).astype(np.float32)
    x[7, 3], x[9, 0], x[400, 5] = np.nan, np.inf, -np.inf
    with pytest.raises(ValueError, match=r"3 row\(s\) hold NaN or inf, the first is row 7"):
        EmbeddingIndex.build(x)
    with pytest.raises(ValueError, match=r"3 row\(s\).*first is row 7"):
        EmbeddingIndex.build((x[i : i + 100] for i in range(0, 500, 100)), batch_size=100)
    index = EmbeddingIndex.build(np.nan_to_num(x, posinf=0, neginf=0), kind="flat")
    with pytest.raises(ValueError, match=r"queries: 1 row\(s\).*row 0"):
        index.search(x[7:8], 3)
    with pytest.raises(ValueError, match="first is row 2"):
        index.add(x[5:10])
    assert len(index) == 500  # nothing of the refused batch was added
    from clipkit.retrieval.arithmetic import nearest_words

    with pytest.raises(ValueError, match="NaN/inf"):
        nearest_words(tiny_model, np.full(64, np.nan, np.float32))


def test_a_model_with_nan_weights_cannot_write_embeddings(fresh_tiny_model, shapes_dir, tmp_path, capsys):
    import torch

    with torch.no_grad():
        next(fresh_tiny_model.model.visual.parameters()).fill_(float("nan"))
    fresh_tiny_model.refresh_identity()
    with pytest.raises(ValueError, match=r"image embeddings: 100 of 100 rows hold NaN or inf, the first is row 0"):
        write_embeddings(
            fresh_tiny_model, tmp_path / "e", shards=str(shapes_dir / "holdout" / "00000.tar"), progress=False
        )
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "argv,words",
    [
        (["index", "build", "e", "i", "--recall", "nan"], "'nan' is not a finite number"),
        (["index", "build", "e", "i", "--max-memory", "inf"], "expected a size"),
        (["index", "build", "e", "i", "--train-on", "0"], "expected an integer >= 1"),
        (["embed", "--model", "m", "--out", "o", "--batch-size", "0"], "expected an integer >= 1"),
        (["search", "i", "--text", "x", "-k", "-3"], "expected an integer >= 1"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and words in capsys.readouterr().err


def test_search_k_is_capped_at_the_index_size(emb, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(emb), str(idx)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--text", "a red circle", "-k", "1000000000"]) == 0
    hits = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(hits) == 200


# ----------------------------------------------------------------------------- honest counting


def _cut(path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_truncated_and_empty_shards_are_counted(tmp_path, tiny_model):
    from clipkit.shapes.world import write_split

    write_split(tmp_path, split="val", num=300, seed=1, shard_size=100)
    _cut(tmp_path / "00000.tar", 0.5)  # cut in half
    (tmp_path / "00001.tar").write_bytes(b"")  # 0 bytes
    summary = write_embeddings(tiny_model, tmp_path / "e", shards=str(tmp_path / "{00000..00002}.tar"), progress=False)
    skipped = summary["skipped"]
    assert skipped["bad_tar"] == 100 and 0 < skipped["truncated"] < 100
    assert summary["count"] + skipped["truncated"] + skipped["bad_tar"] == 300  # every promised sample accounted
    assert EmbeddingFolder(tmp_path / "e").count == summary["count"]


def test_a_truncated_tar_without_stats_counts_at_least_one(tmp_path):
    from clipkit.data.shards import shard_pipeline

    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        for i in range(20):
            for ext, payload in (("txt", b"a caption"), ("png", b"\x89PNG" + bytes(600))):
                info = tarfile.TarInfo(f"k{i:03d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    _cut(tmp_path / "x.tar", 0.5)
    pipeline, counter = shard_pipeline(str(tmp_path / "x.tar"), fields=("__key__",))
    list(pipeline)
    assert counter.summary()["truncated"] >= 1


def test_nothing_readable_is_an_error_unless_allowed(tmp_path, capsys):
    (tmp_path / "00000.tar").write_bytes(os.urandom(4096))
    (tmp_path / "empty.txt").write_text("\n  \n")
    argv = ["embed", "--model", "shapes-tiny", "--shards", str(tmp_path / "00000.tar"), "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    assert "nothing was embedded" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert (
        main(["embed", "--model", "shapes-tiny", "--texts", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "t")])
        == 2
    )
    assert "holds no text" in capsys.readouterr().err
    assert main([*argv, "--allow-empty"]) == 0
    assert EmbeddingFolder(tmp_path / "e").count == 0


def test_malformed_stats_file_is_named(tmp_path):
    from clipkit.data.shards import count_samples

    (tmp_path / "00000.tar").write_bytes(b"")
    (tmp_path / "00000_stats.json").write_text("{oops")
    with pytest.raises(ValueError, match="00000_stats.json' is not valid JSON"):
        count_samples(str(tmp_path / "00000.tar"))


# ----------------------------------------------------------------------------- the error policy, permissions


def test_os_errors_are_one_line_and_debug_shows_the_traceback(emb, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = ["index", "build", str(emb), str(blocker / "idx")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{str(blocker)!r} is a file, not a folder" in err and "Traceback" not in err
    for number, words in (
        (errno.ENOSPC, "no space left"),
        (errno.EROFS, "read-only"),
        (errno.EBUSY, "busy"),
        (errno.EACCES, "permission denied"),
        (errno.EEXIST, "already exists"),
    ):
        assert user_error(OSError(number, os.strerror(number), "/data/out")).startswith(f"/data/out: {words}")
    assert user_error(
        RuntimeError(
            "Error in void faiss::Clustering::train at Clustering.cpp:278: Error: "
            "'nx >= k' failed: Number of training points (10) should be at least as large "
            "as number of clusters (256)"
        )
    ).startswith("FAISS refused:")
    assert user_error(KeyError("bug")) is None
    monkeypatch.setenv("CLIPKIT_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(emb, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        index = EmbeddingIndex.build(EmbeddingFolder(emb), kind="flat")
        index.save(tmp_path / "idx")
        write_embeddings(index.model(), tmp_path / "e", texts=["a red circle"], progress=False)
    finally:
        os.umask(old)
    for path in (tmp_path / "idx", tmp_path / "e", tmp_path / "e" / "text_emb"):
        assert stat.S_IMODE(path.stat().st_mode) == dir_mode, path
    for path in (
        tmp_path / "idx" / "index.faiss",
        tmp_path / "idx" / "manifest.json",
        tmp_path / "e" / "text_emb" / "text_emb_00000.npy",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
