"""Real faults against real writers: kill -9 and SIGINT of a `python -m clipkit embed` process mid-write,
a second writer at the same time, a full filesystem. Each asserts the exact outcome: the half-written
output is refused by its readers, the previous output is intact, the interrupted job resumes to the
same rows as an uninterrupted one (issue 17; issue 15's resume)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from clipkit.cli import main
from clipkit.io import lock_path_for, partial_dir_for
from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.retrieval.embeddings.writer import write_embeddings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ten_shards(tmp_path_factory):
    """1,000 shapes samples in 10 shards of 100: enough parts to interrupt between them."""
    from clipkit.shapes.world import write_split

    root = tmp_path_factory.mktemp("ten")
    write_split(root, split="train", num=1000, seed=5, shard_size=100)
    return str(root / "{00000..00009}.tar")


def _embed_args(shards: str, out: Path, *extra: str) -> list[str]:
    return ["embed", "--model", "shapes-tiny", "--shards", shards, "--out", str(out), "--batch-size", "50", *extra]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Ctrl-C must reach the writer even when pytest itself runs with SIGINT ignored (a background job of a
    # non-interactive shell, e.g. `make test &`): Python only installs its handler if SIGINT is not ignored.
    return subprocess.Popen(
        [sys.executable, "-m", "clipkit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until `path` exists (the writer is mid-job); fails if the process ends first."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the writer ended (rc {proc.returncode}) before {path} appeared:\n{out}\n{err}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(ten_shards, tmp_path_factory):
    """The same job, uninterrupted, in this process (shapes-tiny = create('shapes-tiny', seed=0))."""
    import clipkit

    out = tmp_path_factory.mktemp("ref") / "emb"
    write_embeddings(
        clipkit.create("shapes-tiny", seed=0),
        out,
        shards=ten_shards,
        batch_size=50,
        progress=False,
        model_source="shapes-tiny",
    )
    return EmbeddingFolder(out)


@pytest.mark.slow
def test_kill9_mid_write_is_refused_then_resumes_to_the_same_rows(ten_shards, reference, tmp_path, capsys):
    out = tmp_path / "emb"
    proc = _start(_embed_args(ten_shards, out))
    _wait_for(partial_dir_for(out) / "units" / "00001.json", proc)

    # A second writer while the first one runs: refused at once, naming the holder.
    assert main(_embed_args(ten_shards, out)) == 2
    err = capsys.readouterr().err
    assert f"is being written by another process (pid {proc.pid}" in err and "clipkit embed" in err

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists() and partial_dir_for(out).is_dir() and lock_path_for(out).is_file()  # stale lock left

    # Readers refuse the half-written job (the reproduction: `index build e idx` exited 0).
    assert main(["index", "build", str(out), str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "does not exist; an interrupted run left" in err and ".emb.partial" in err
    assert not (tmp_path / "idx").exists()
    with pytest.raises(FileNotFoundError, match="interrupted run"):
        EmbeddingFolder(out)

    # Same command again: the dead holder's lock is taken over, complete parts are checked and kept.
    assert main(_embed_args(ten_shards, out)) == 0
    printed = capsys.readouterr().out
    assert "resuming:" in printed and "of 10 part(s) already complete (checked)" in printed
    assert not lock_path_for(out).exists() and not partial_dir_for(out).exists()
    got = EmbeddingFolder(out)
    assert got.count == reference.count == 1000
    assert got.metadata(["key"])["key"] == reference.metadata(["key"])["key"]
    np.testing.assert_allclose(got.load("img"), reference.load("img"), atol=1e-6)
    np.testing.assert_allclose(got.load("text"), reference.load("text"), atol=1e-6)
    assert got.info["parts"].keys() == reference.info["parts"].keys()


@pytest.mark.slow
def test_resume_redoes_a_damaged_part(ten_shards, reference, tmp_path, capsys):
    """'Checked, not assumed': a recorded part whose bytes changed is embedded again."""
    out = tmp_path / "emb"
    proc = _start(_embed_args(ten_shards, out))
    _wait_for(partial_dir_for(out) / "units" / "00001.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    part = partial_dir_for(out) / "img_emb" / "img_emb_00000.npy"
    data = bytearray(part.read_bytes())
    data[-8:] = b"\x00" * 8  # same size, other bytes
    part.write_bytes(bytes(data))
    assert main(_embed_args(ten_shards, out)) == 0
    np.testing.assert_allclose(EmbeddingFolder(out).load("img"), reference.load("img"), atol=1e-6)


@pytest.mark.slow
def test_sigint_keeps_the_previous_output(ten_shards, tmp_path):
    import clipkit

    out = tmp_path / "emb"
    old = write_embeddings(clipkit.create("shapes-tiny", seed=0), out, texts=["a red circle", "a hat"], progress=False)
    proc = _start(_embed_args(ten_shards, out, "--overwrite"))
    _wait_for(partial_dir_for(out) / "units" / "00000.json", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    kept = EmbeddingFolder(out)  # the old embeddings, whole
    assert kept.count == 2 and kept.modalities == ("text",) and kept.info["written"] == old["written"]
    assert not lock_path_for(out).exists()  # the lock is released on Ctrl-C


@contextlib.contextmanager
def _tmpfs(size: str, options: str = ""):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (the full-disk test runs where the tests run as root)")
    mnt = Path(tempfile.mkdtemp(prefix="clipkit-tmpfs-"))
    opts = f"size={size}" + (f",{options}" if options else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True).returncode:
        mnt.rmdir()
        pytest.skip("this machine does not allow mounting a tmpfs (container without CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def test_full_filesystem_leaves_the_previous_output_intact(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"a red circle number {i}" for i in range(4000)))
    with _tmpfs("400k") as fs:
        out, idx = fs / "emb", fs / "idx"
        small = tmp_path / "small.txt"
        small.write_text("a red circle\na blue square\na green star\n")
        assert main(["embed", "--model", "shapes-tiny", "--texts", str(small), "--out", str(out)]) == 0
        assert main(["index", "build", str(out), str(idx)]) == 0
        before = (out / "manifest.json").read_bytes(), (idx / "manifest.json").read_bytes()
        capsys.readouterr()

        # 4,000 text embeddings (~1 MB of float32) do not fit in 400 KB.
        rc = main(["embed", "--model", "shapes-tiny", "--texts", str(texts), "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 2 and "no space left on the device" in err and str(fs) in err and "Traceback" not in err
        assert (out / "manifest.json").read_bytes() == before[0]
        assert EmbeddingFolder(out).count == 3
        from clipkit.retrieval.index.core import EmbeddingIndex

        shutil.rmtree(partial_dir_for(out), ignore_errors=True)  # what a user frees before retrying
        filler = fs / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:  # fill the disk, then re-save the index
            f.write(b"\0" * (1 << 20))
        loaded = EmbeddingIndex.load(idx)
        with pytest.raises(OSError) as info:
            loaded.save(idx)
        assert info.value.filename and str(fs) in str(info.value.filename)
        assert (idx / "manifest.json").read_bytes() == before[1] and len(EmbeddingIndex.load(idx)) == 3
        assert not partial_dir_for(idx).exists() and not lock_path_for(idx).exists()


def test_read_only_filesystem_is_one_line(tmp_path, capsys):
    with _tmpfs("1m", "ro") as fs:
        rc = main(["embed", "--model", "shapes-tiny", "--texts", str(_texts(tmp_path)), "--out", str(fs / "e")])
        err = capsys.readouterr().err
    assert rc == 2 and "read-only file system; choose a writable location" in err and "Traceback" not in err


def _texts(tmp_path: Path) -> Path:
    p = tmp_path / "t.txt"
    p.write_text("a red circle\n")
    return p
