"""Training under bad data and bad numbers: refused at once with a message, never a hang, nothing of the user's lost."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
import torch

from clipkit.config import config_from_dict
from clipkit.train.clip import train_clip
from clipkit.train.config import ClipTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(train_data: str, out, **overrides) -> ClipTrainConfig:
    base = dict(
        model="shapes-tiny",
        train_data=train_data,
        train_num_samples=64,
        out_dir=str(out),
        batch_size=8,
        epochs=1,
        num_workers=0,
        progress=False,
        num_threads=1,
        log_every=1,
    )
    return config_from_dict(ClipTrainConfig, {**base, **overrides})


def _tar_without_captions(path):
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for i in range(20):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (i, 0, 0)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("kind", ["empty", "random_bytes", "no_captions"])
def test_an_epoch_without_a_single_batch_is_an_error_not_a_hang(tmp_path, kind):
    shard = tmp_path / "bad.tar"
    if kind == "empty":
        shard.write_bytes(b"")
    elif kind == "random_bytes":
        shard.write_bytes(os.urandom(5000))
    else:
        _tar_without_captions(shard)
    with pytest.raises(ValueError, match=r"epoch 0 yielded no full batch of 8 .*bad\.tar.*skipped"):
        train_clip(_config(str(shard), tmp_path / "run"))
    assert not (tmp_path / "run" / "model").exists()


def test_export_dir_never_replaces_a_users_folder(shapes_dir, tmp_path):
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(
        ValueError, match="my-photos.*already exists and is a folder that clipkit did not write.*overwrite"
    ):
        train_clip(_config(str(shapes_dir / "train"), tmp_path / "run", export_dir=str(mine), max_steps=1))
    assert (mine / "holiday.jpg").read_bytes() == b"precious" and sorted(p.name for p in mine.iterdir()) == [
        "holiday.jpg"
    ]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="already exists and is a file"):
        train_clip(_config(str(shapes_dir / "train"), tmp_path / "run", export_dir=str(tmp_path / "a-file")))
    with pytest.raises(ValueError, match="inside the input"):  # never into the training data
        train_clip(_config(str(shapes_dir / "train"), tmp_path / "run", export_dir=str(shapes_dir / "train" / "m")))


def test_one_run_at_a_time_per_out_dir(shapes_dir, tmp_path):
    from clipkit.io import OutputInUseError, output_lock

    with output_lock(tmp_path / "run"):  # another writer holds the run folder
        import subprocess
        import sys

        code = (
            "from clipkit.cli import main; raise SystemExit(main(['train', '--train-data', "
            f"'{shapes_dir / 'train'}', '--out-dir', '{tmp_path / 'run'}', '--max-steps', '1', '--no-progress']))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"{str(tmp_path / 'run')!r} is being written by another process (pid {os.getpid()}" in proc.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # refused before writing anything
    assert issubclass(OutputInUseError, ValueError)


@pytest.mark.parametrize(
    "field,value",
    [("lr", float("inf")), ("lr", float("nan")), ("weight_decay", float("nan")), ("grad_clip", float("inf"))],
)
def test_non_finite_numbers_are_refused_in_configs(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field}.*finite"):
        _config("x.tar", tmp_path, **{field: value})


def test_weights_are_checked_before_anything_is_saved():
    from clipkit.train.loop import check_weights_finite
    from clipkit.train.runtime import NonFiniteLossError

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    check_weights_finite(net, 3)
    with torch.no_grad():
        net[1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"'1.bias' holds nan/inf at step 3; nothing was saved"):
        check_weights_finite(net, 3)


def test_fewer_readable_samples_than_the_stats_claim(shapes_dir, tmp_path):
    """The stats promise 600 samples, one shard is unreadable: the run goes on, says how many passes it made,
    and counts each bad sample once, not once per pass."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "train", data)
    (data / "00002.tar").write_bytes(os.urandom(3000))  # 200 of the 600 samples are gone
    summary = train_clip(_config(str(data), tmp_path / "run", train_num_samples=None, batch_size=50, epochs=1))
    assert summary["steps"] == 600 // 50
    assert summary["data_passes"] == 2  # 400 readable samples: 8 + 4 steps
    assert summary["skipped_by_reason"]["bad_tar"] + summary["skipped_by_reason"].get("truncated", 0) >= 1
    first = summary["skipped_samples"]
    assert first == sum(summary["skipped_by_reason"].values()) and first <= 200
