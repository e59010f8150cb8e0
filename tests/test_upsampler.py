"""The cascade's super-resolution stage: a DecoderUNet conditioned on a low-resolution image (32 -> 64 px)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_UP = dict(
    embed_dim=0,
    image_size=64,
    low_res_size=32,
    patch_size=4,
    channels=[16, 32],
    attention_levels=[False, False],
    aug_level=0.1,
)


def _config(**kw):
    from clipkit.unclip.config import UpsamplerConfig

    return UpsamplerConfig(**{**TINY_UP, **kw})


def test_config_round_trip_and_checks():
    from clipkit.config import config_from_dict
    from clipkit.train.config import UpsamplerTrainConfig
    from clipkit.unclip.config import DecoderConfig, UpsamplerConfig

    cfg = _config()
    assert config_from_dict(UpsamplerConfig, json.loads(json.dumps(cfg.to_json()))) == cfg
    train = config_from_dict(UpsamplerTrainConfig, {"train_data": "x", "upsampler": TINY_UP, "aug_level_max": 0.4})
    assert train.upsampler == cfg and train.aug_level_max == 0.4
    assert config_from_dict(UpsamplerTrainConfig, train.to_json()).to_json() == train.to_json()
    with pytest.raises(ValueError, match="low_res_size"):
        UpsamplerConfig(image_size=64, low_res_size=64)
    with pytest.raises(ValueError, match="embed_dim"):
        DecoderConfig(embed_dim=0)  # a base decoder needs its condition
    with pytest.raises(ValueError, match="aug_level_max"):
        config_from_dict(UpsamplerTrainConfig, {"train_data": "x", "upsampler": TINY_UP, "aug_level_max": 1.5})
    with pytest.raises(ValueError, match="embed_dim 0"):
        config_from_dict(UpsamplerTrainConfig, {"train_data": "x", "upsampler": {**TINY_UP, "embed_dim": 8}})


def test_noise_augmentation_is_deterministic_and_exact():
    from clipkit.unclip.decoder import downsample, noise_low_res

    low = torch.rand(3, 3, 32, 32) * 2 - 1
    noise = torch.randn(3, 3, 32, 32)
    level = torch.tensor([0.0, 0.5, 1.0])
    out = noise_low_res(low, level, noise=noise)
    assert torch.equal(out[0], low[0])  # level 0: the image itself
    c = math.cos(math.pi / 4)
    assert torch.allclose(out[1], c * low[1] + c * noise[1], atol=1e-6)  # equal parts at 0.5
    assert torch.allclose(out[2], noise[2], atol=1e-6)  # level 1: pure noise
    a = noise_low_res(low, 0.2, generator=torch.Generator().manual_seed(3))
    b = noise_low_res(low, 0.2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, low)
    with pytest.raises(ValueError, match="noise levels"):
        noise_low_res(low, 1.5)
    # the low-resolution input of training is the area average (what the shapes renderer does)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_shapes_of_inputs_and_outputs():
    from clipkit.unclip.decoder import DecoderUNet

    net = DecoderUNet(_config())
    x, low = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)
    t = torch.tensor([10, 900])
    assert net(x, t, low_res=low, aug_level=torch.tensor([0.0, 0.3])).shape == (2, 3, 64, 64)
    assert net(x, t, low_res=low, aug_level=0.1).shape == (2, 3, 64, 64)  # one level for all
    assert not hasattr(net, "null_embed")  # no embedding at all
    with pytest.raises(ValueError, match="low_res"):
        net(x, t)
    with pytest.raises(ValueError, match="low_res has shape"):
        net(x, t, low_res=torch.randn(2, 1, 32, 32), aug_level=0.1)
    # the low-resolution image and its noise level both reach the output (once the zero-initialised
    # output layers, which make every block start as the identity, hold weights)
    for p in net.parameters():
        if p.ndim > 1 and not p.detach().any():
            torch.nn.init.normal_(p, std=0.02)
    ref = net(x, t, low_res=low, aug_level=0.1)
    assert not torch.allclose(ref, net(x, t, low_res=-low, aug_level=0.1))
    assert not torch.allclose(ref, net(x, t, low_res=low, aug_level=0.4))


@pytest.fixture(scope="module")
def shards64(tmp_path_factory):
    from clipkit.shapes.world import write_split

    root = tmp_path_factory.mktemp("shapes64")
    write_split(root, split="train", num=160, seed=5, shard_size=80, image_size=64)
    return root


def test_training_loss_falls_and_the_pipeline_upsamples(tiny_model_dir, shards64, tmp_path):
    import clipkit
    from clipkit.train.unclip import (
        DecoderTrainConfig,
        PriorTrainConfig,
        UpsamplerTrainConfig,
        train_decoder,
        train_prior,
        train_upsampler,
    )

    pipe_dir = tmp_path / "pipe"
    common = dict(clip=str(tiny_model_dir), pipeline_dir=str(pipe_dir), progress=False, num_threads=1)
    summary = train_upsampler(
        UpsamplerTrainConfig(
            out_dir=str(tmp_path / "up"),
            train_data=str(shards64),
            num_samples=160,
            val_samples=8,
            batch_size=16,
            max_steps=40,
            lr=3e-3,
            warmup_steps=5,
            log_every=5,
            upsampler=TINY_UP,
            **common,
        )
    )
    assert summary["steps"] == 40 and summary["train_images"] == 152
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "up" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses
    assert (tmp_path / "up" / "samples.png").is_file() and (pipe_dir / "upsampler" / "config.json").is_file()

    # a base decoder in the same folder (the same CLIP), then the cascade loads and runs
    train_decoder(
        DecoderTrainConfig(
            out_dir=str(tmp_path / "dec"),
            train_data=str(shards64),
            num_samples=64,
            val_samples=8,
            batch_size=8,
            max_steps=2,
            log_every=1,
            **common,
            decoder=dict(channels=[16, 32], attention_levels=[False, True], heads=2, context_tokens=2),
        )
    )
    train_prior(
        PriorTrainConfig(
            out_dir=str(tmp_path / "prior"),
            train_data=str(shards64),
            num_samples=64,
            val_samples=8,
            batch_size=8,
            max_steps=2,
            log_every=1,
            **common,
            prior=dict(width=32, layers=1, heads=2),
        )
    )
    pipe = clipkit.UnCLIP.load(pipe_dir)
    assert pipe.upsampler is not None and pipe.upsampler.config.low_res_size == 32
    images = pipe.generate(
        "a red circle", num_images=2, steps=2, prior_steps=2, upsample=True, upsample_steps=3, seed=0
    )
    assert [im.size for im in images] == [(64, 64)] * 2
    from clipkit.shapes.world import ShapeAttributes, render

    emb = pipe.clip.encode_images([render(ShapeAttributes("star", "red", "large", "center", "white", False))])
    big = pipe.decode(emb.expand(2, -1), steps=2, upsample=True, upsample_steps=3, seed=0)
    assert [im.size for im in big] == [(64, 64)] * 2
    small = pipe.decode(emb.expand(2, -1), steps=2, seed=0, output="tensor")
    assert small.shape == (2, 3, 32, 32)
    same = pipe.decode(emb.expand(2, -1), steps=2, upsample=True, upsample_steps=3, seed=0, output="tensor")
    assert same.shape == (2, 3, 64, 64) and torch.equal(
        same, pipe.decode(emb.expand(2, -1), steps=2, upsample=True, upsample_steps=3, seed=0, output="tensor")
    )
    assert pipe.upsample(small, steps=2, seed=1, output="tensor").shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="upsampler takes"):
        pipe.upsample(torch.zeros(1, 3, 16, 16))
    # the saved pipeline round-trips with its upsampler; a pipeline without one says how to get one
    pipe.save(tmp_path / "copy")
    assert clipkit.UnCLIP.load(tmp_path / "copy").upsampler is not None
    no_up = clipkit.UnCLIP(pipe.clip, decoder=pipe.decoder)
    with pytest.raises(ValueError, match="train-upsampler"):
        no_up.decode(emb, steps=2, upsample=True)
