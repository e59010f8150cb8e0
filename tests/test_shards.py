"""Shards: img2dataset layout, plain-webdataset round trip, robust reading, worker splitting."""

from __future__ import annotations

import io
import json
import tarfile
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from clipkit.cli import main as cli_main
from clipkit.data.shards import count_samples, expand_urls, shard_loader, shard_pipeline
from clipkit.shapes import world as shapes


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def test_layout_and_stats_follow_img2dataset(shapes_dir):
    train = shapes_dir / "train"
    assert sorted(p.name for p in train.iterdir()) == [
        "00000.tar",
        "00000_stats.json",
        "00001.tar",
        "00001_stats.json",
        "00002.tar",
        "00002_stats.json",
    ]
    stats = json.loads((train / "00000_stats.json").read_text())
    assert stats["successes"] == stats["count"] == 200
    assert count_samples(str(train / "{00000..00002}.tar")) == 600
    assert count_samples(str(train / "00000.tar") + "::" + str(train / "00001.tar")) == 400
    assert count_samples("https://example.com/{00000..00001}.tar") is None


def test_round_trip_through_plain_webdataset(shapes_dir):
    import webdataset as wds

    expected = {s.key: s for s in shapes.generate("val", 200, seed=1)}
    ds = wds.WebDataset(str(shapes_dir / "val" / "00000.tar"), shardshuffle=False).decode("pil")
    seen = 0
    for sample in ds:
        original = expected[sample["__key__"]]
        assert sample["txt"] == original.caption
        assert np.array_equal(np.asarray(sample["png"]), np.asarray(original.image))
        assert sample["json"]["shape"] == original.attributes.shape
        assert sample["json"]["hat"] == original.attributes.hat
        seen += 1
    assert seen == 200


def test_hat_pair_ids_are_stored(shapes_dir):
    pipeline, _ = shard_pipeline(str(shapes_dir / "hat_pairs" / "00000.tar"), fields=("json",))
    metas = [m for (m,) in pipeline]
    assert len(metas) == 40
    assert sorted({m["pair_id"] for m in metas}) == list(range(20))


def test_pipeline_batches_tensors(shapes_dir, tiny_model):
    pipeline, skipped = shard_pipeline(
        str(shapes_dir / "train" / "{00000..00002}.tar"),
        tiny_model.preprocess,
        tiny_model.tokenizer,
        batch_size=64,
        shuffle=100,
    )
    batches = list(pipeline)
    images, tokens = batches[0]
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert tokens.shape == (64, tiny_model.context_length) and tokens.dtype == torch.long
    assert sum(len(b[0]) for b in batches) == 600
    assert skipped.total == 0


@pytest.mark.parametrize("num_workers", [0, 2, 4])
def test_workers_split_shards_without_duplicates(shapes_dir, num_workers):
    pipeline, _ = shard_pipeline(str(shapes_dir / "train" / "{00000..00002}.tar"), fields=("__key__",), batch_size=50)
    keys = [k for (batch,) in shard_loader(pipeline, num_workers=num_workers) for k in batch]
    assert len(keys) == 600 and len(set(keys)) == 600


def test_fewer_shards_than_workers_does_not_hang(shapes_dir):
    pipeline, _ = shard_pipeline(str(shapes_dir / "holdout" / "00000.tar"), fields=("__key__",), batch_size=32)
    result = {}

    def consume():
        result["keys"] = [k for (batch,) in shard_loader(pipeline, num_workers=3) for k in batch]

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "reading 1 shard with 3 workers hung"
    assert len(result["keys"]) == 100


def test_resampled_draws_with_replacement_for_a_fixed_epoch(shapes_dir):
    pipeline, _ = shard_pipeline(
        str(shapes_dir / "train" / "{00000..00002}.tar"),
        fields=("__key__",),
        batch_size=100,
        resampled=True,
        epoch_batches=9,
    )
    batches = list(pipeline)
    assert len(batches) == 9  # more than the 6 batches one pass holds: resampling repeats shards


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_samples_are_skipped_and_counted(tmp_path, num_workers):
    good = _png()
    members = {}
    for i in range(10):
        members[f"good{i}.png"], members[f"good{i}.txt"] = good, f"a red square {i}".encode()
    members["trunc.png"], members["trunc.txt"] = good[: len(good) // 2], b"a truncated png"
    members["notxt.png"] = good
    members["emptytxt.png"], members["emptytxt.txt"] = good, b"   \n"
    members["noimg.txt"] = b"a caption without an image"
    members["garbage.jpg"], members["garbage.txt"] = b"not a jpeg at all", b"garbage"
    _tar(tmp_path / "00000.tar", members)
    _tar(
        tmp_path / "00001.tar",
        {f"ok{i}.{ext}": (good if ext == "png" else b"ok") for i in range(5) for ext in ("png", "txt")},
    )
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar file" * 10)

    pipeline, skipped = shard_pipeline(str(tmp_path / "{00000..00002}.tar"), fields=("__key__", "text"), batch_size=4)
    keys = [k for batch, _ in shard_loader(pipeline, num_workers=num_workers) for k in batch]
    assert sorted(keys) == sorted([f"good{i}" for i in range(10)] + [f"ok{i}" for i in range(5)])
    counts = skipped.summary()
    assert counts["bad_image"] == 2 and counts["no_text"] == 1 and counts["empty_text"] == 1
    assert counts["no_image"] == 1 and counts["bad_tar"] >= 1


def test_bad_arguments_are_reported(shapes_dir):
    with pytest.raises(ValueError, match="field 'caption'"):
        shard_pipeline(str(shapes_dir / "val" / "00000.tar"), fields=("caption",))
    with pytest.raises(ValueError, match="no shard urls"):
        expand_urls([])


def test_cli_writes_shards(tmp_path, capsys):
    assert (
        cli_main(
            [
                "shapes",
                "--out",
                str(tmp_path / "s"),
                "--num",
                "30",
                "--split",
                "holdout",
                "--shard-size",
                "20",
                "--seed",
                "7",
            ]
        )
        == 0
    )
    assert "wrote 30 holdout samples in 2 shard(s)" in capsys.readouterr().out
    assert count_samples(str(tmp_path / "s" / "{00000..00001}.tar")) == 30
    assert cli_main(["shapes", "--out", str(tmp_path / "s2"), "--num", "3", "--split", "hat_pairs"]) == 2
    assert "must be even" in capsys.readouterr().err
