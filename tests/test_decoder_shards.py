"""The decoder trains on any image shards: plain `webdataset` tars of non-shapes images of another size."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (48, 40)  # width, height: neither square nor the decoder's 32 px


def _picture(rng: np.random.Generator):
    """A random colour gradient with a soft blob: nothing like the shapes world."""
    from PIL import Image

    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = (xx / (w - 1))[..., None] if rng.random() < 0.5 else (yy / (h - 1))[..., None]
    img = a * (1 - ramp) + b * ramp
    cx, cy, r = rng.uniform(8, w - 8), rng.uniform(8, h - 8), rng.uniform(4, 12)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
    img = img * (1 - blob) + rng.uniform(0, 255, 3) * blob
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _write_shards(folder, n: int = 160, corrupt_at: int = 37) -> str:
    """Two tars written by webdataset's own TarWriter (jpg + txt + json), one sample's image bytes corrupt."""
    import webdataset as wds

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for shard in range(2):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for i in range(shard * n // 2, (shard + 1) * n // 2):
                buf = io.BytesIO()
                _picture(rng).save(buf, format="JPEG", quality=95)
                data = b"not an image at all" if i == corrupt_at else buf.getvalue()
                sink.write(
                    {"__key__": f"{i:06d}", "jpg": data, "txt": f"gradient {i}", "json": json.dumps({"i": i}).encode()}
                )
    return str(folder)


def test_decoder_trains_on_plain_webdataset_shards_of_other_images(tiny_model_dir, tmp_path):
    from clipkit.train.unclip import DecoderTrainConfig, train_decoder

    config = DecoderTrainConfig(
        clip=str(tiny_model_dir),
        out_dir=str(tmp_path / "dec"),
        train_data=_write_shards(tmp_path / "shards"),
        num_samples=160,
        val_samples=8,
        max_steps=60,
        lr=3e-3,
        warmup_steps=5,
        batch_size=16,
        log_every=5,
        progress=False,
        num_threads=1,
        decoder=dict(channels=[16, 32], attention_levels=[False, True], heads=2, context_tokens=2),
    )
    summary = train_decoder(config)

    # the corrupt sample was skipped and counted; the rest (any size, centre-cropped to 32 px) trained
    assert summary["skipped_samples"]["bad_image"] == 1
    assert sum(summary["skipped_samples"].values()) == 1
    assert summary["train_images"] == 160 - 1 - 8
    rows = [json.loads(line) for line in (tmp_path / "dec" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and all(np.isfinite(losses))
    early, late = np.mean(losses[:2]), np.mean(losses[-3:])
    assert late < 0.7 * early, losses  # x0 target: from predicting zeros to the images' colours
    assert (tmp_path / "dec" / "decoder" / "model.safetensors").is_file()
    assert (tmp_path / "dec" / "samples.png").is_file()
