"""unCLIP training: a tiny decoder learns colour from the CLIP embedding; prior + resume + CLI plumbing."""

from __future__ import annotations

import json

import pytest
import torch

from clipkit.shapes.world import ShapeAttributes, ShapeSample, render

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    decoder=dict(channels=[16, 32], attention_levels=[False, True], heads=2, context_tokens=2),
    batch_size=32,
    progress=False,
    num_threads=1,
    log_every=10,
)
TINY_PRIOR = dict(width=32, layers=1, heads=2)


def _red_blue_circles(folder, n: int = 256) -> str:
    """Shards of large centred red or blue circles on white, no hat (what the decoder must tell apart)."""
    from clipkit.data.shards import write_shards

    attrs = [ShapeAttributes("circle", ("red", "blue")[i % 2], "large", "center", "white", False) for i in range(n)]
    write_shards((ShapeSample(f"{i:06d}", render(a), f"a {a.color} circle", a) for i, a in enumerate(attrs)), folder)
    return str(folder)


@pytest.mark.slow
def test_tiny_decoder_learns_the_condition_colour(tiny_model_dir, tmp_path):
    import clipkit
    from clipkit.train.unclip import DecoderTrainConfig, train_decoder

    config = DecoderTrainConfig(
        clip=str(tiny_model_dir),
        out_dir=str(tmp_path / "dec"),
        pipeline_dir=str(tmp_path / "pipe"),
        train_data=_red_blue_circles(tmp_path / "data"),
        num_samples=256,
        val_samples=16,
        max_steps=160,
        lr=3e-3,
        warmup_steps=20,
        **TINY,
    )
    summary = train_decoder(config)
    assert summary["steps"] == 160 and (tmp_path / "dec" / "samples.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "dec" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]

    pipe = clipkit.UnCLIP.load(tmp_path / "pipe")  # decoder only: no prior trained here
    assert pipe.prior is None
    conds = [ShapeAttributes("circle", c, "large", "center", "white", False) for c in ("red", "blue")]
    emb = pipe.clip.encode_images([render(a) for a in conds]).repeat_interleave(4, 0)
    x = pipe.decode(
        emb, steps=20, guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output="tensor"
    )  # (8, 3, 32, 32)
    red_minus_blue = (x[:, 0] - x[:, 2]).mean(dim=(1, 2))  # per image
    # a red circle covers ~15% of the image: R - B ~ +0.22 on [-1, 1]; a blue one ~ -0.22
    assert red_minus_blue[:4].min() > 0.08, red_minus_blue
    assert red_minus_blue[4:].max() < -0.08, red_minus_blue
    # the white background is learnt too
    assert x.mean() > 0.5


def test_prior_training_resume_and_pipeline_folder(tiny_model_dir, shapes_dir, tmp_path):
    import clipkit
    from clipkit.train.unclip import DecoderTrainConfig, PriorTrainConfig, train_decoder, train_prior

    common = dict(
        clip=str(tiny_model_dir),
        pipeline_dir=str(tmp_path / "pipe"),
        num_samples=128,
        val_samples=16,
        train_data=str(shapes_dir / "train"),
    )
    train_decoder(DecoderTrainConfig(out_dir=str(tmp_path / "dec"), max_steps=3, **common, **TINY))
    cfg = PriorTrainConfig(
        out_dir=str(tmp_path / "prior"),
        prior=TINY_PRIOR,
        batch_size=32,
        max_steps=4,
        checkpoint_every=2,
        progress=False,
        num_threads=1,
        log_every=1,
        **common,
    )
    summary = train_prior(cfg)
    assert summary["steps"] == 4 and -1 <= summary["val_cosine_prior"] <= 1
    ckpts = sorted(p.name for p in (tmp_path / "prior" / "checkpoints").iterdir())
    assert ckpts[-1] == "step_00000004" and "ema.safetensors" in {
        p.name for p in (tmp_path / "prior" / "checkpoints" / ckpts[-1]).iterdir()
    }
    # resume continues from the latest checkpoint up to the new max_steps
    from clipkit.config import config_from_dict

    cfg2 = config_from_dict(PriorTrainConfig, {**cfg.to_json(), "max_steps": 6, "resume": "latest"})
    train_prior(cfg2)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "prior" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    pipe = clipkit.UnCLIP.load(tmp_path / "pipe")
    assert pipe.prior is not None
    assert len(pipe.generate("a red circle", num_images=2, steps=2, prior_steps=2)) == 2


def test_prior_trains_on_clipkit_embed_output(tiny_model, tiny_model_dir, shapes_dir, tmp_path):
    import clipkit
    from clipkit.retrieval.embeddings.writer import write_embeddings
    from clipkit.train.unclip import PriorTrainConfig, train_prior

    write_embeddings(tiny_model, tmp_path / "emb", shards=str(shapes_dir / "val" / "00000.tar"))
    small = dict(
        val_samples=20,
        prior=TINY_PRIOR,
        batch_size=32,
        max_steps=3,
        progress=False,
        num_threads=1,
        embeddings=str(tmp_path / "emb"),
    )
    summary = train_prior(PriorTrainConfig(clip=str(tiny_model_dir), out_dir=str(tmp_path / "prior"), **small))
    assert summary["steps"] == 3 and summary["train_pairs"] == 200 - 20
    clipkit.create("shapes-tiny", seed=1).save(tmp_path / "clip2")
    with pytest.raises(ValueError, match="were made by CLIP"):
        train_prior(PriorTrainConfig(clip=str(tmp_path / "clip2"), out_dir=str(tmp_path / "p2"), **small))


def test_pipeline_dir_refuses_another_clip(tiny_model_dir, shapes_dir, tmp_path):
    import clipkit
    from clipkit.train.unclip import DecoderTrainConfig, train_decoder

    data = dict(train_data=str(shapes_dir / "train"), num_samples=64, val_samples=8, max_steps=1)
    train_decoder(
        DecoderTrainConfig(
            clip=str(tiny_model_dir), out_dir=str(tmp_path / "a"), pipeline_dir=str(tmp_path / "p"), **data, **TINY
        )
    )
    clipkit.create("shapes-tiny", seed=1).save(tmp_path / "clip2")
    with pytest.raises(ValueError, match="was built with CLIP"):
        train_decoder(
            DecoderTrainConfig(
                clip=str(tmp_path / "clip2"),
                out_dir=str(tmp_path / "b"),
                pipeline_dir=str(tmp_path / "p"),
                **data,
                **TINY,
            )
        )


def test_cli_train_commands_parse(capsys):
    from clipkit.cli import build_parser
    from clipkit.cli.commands.train import config_from_args

    parser = build_parser()
    args = parser.parse_args(
        [
            "train-decoder",
            "--config",
            "decoder/configs/shapes-decoder.json",
            "--max-steps",
            "5",
            "--decoder.channels",
            "16",
            "32",
            "--decoder.attention-levels",
            "false",
            "true",
        ]
    )
    config = config_from_args(args.config_cls, args)
    assert config.max_steps == 5 and config.pipeline_dir == "runs/unclip"
    assert config.decoder.channels == (16, 32) and config.decoder.heads == 4  # nested: file + flags merged
    args = parser.parse_args(["train-prior", "--config", "shapes-prior"])  # a packaged config by name
    assert config_from_args(args.config_cls, args).prior.width == 128
    with pytest.raises(ValueError, match="filter"):
        from clipkit.data.shards import parse_filters

        parse_filters(["colour"])
    args = parser.parse_args(["train-decoder", "--decoder.prediction", "x_naught", "--train-data", "x"])
    with pytest.raises(ValueError, match="decoder: .*x_naught"):
        config_from_args(args.config_cls, args)
    with pytest.raises(SystemExit):  # inf is refused at parse time
        parser.parse_args(["train-decoder", "--lr", "inf"])
    assert "--lr 'inf': expected a finite number" in capsys.readouterr().err
