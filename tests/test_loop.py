"""The one training loop: contrastive accumulation equals a bigger batch; bf16 and accumulation for every model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clipkit.train.clip import contrastive_losses

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(model, n: int, seed: int):
    from clipkit.shapes.world import generate

    samples = list(generate("train", n, seed=seed))
    images = torch.stack([model.preprocess(s.image) for s in samples])
    texts = model.tokenizer([s.caption for s in samples])
    return images, texts


def _grads(module, losses) -> dict:
    module.zero_grad(set_to_none=True)
    total = 0.0
    for loss, share in losses:
        loss.backward()
        total += float(loss.detach() if share is None else share)
    return total, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n_micro", [2, 4])
def test_contrastive_accumulation_equals_one_big_batch(fresh_tiny_model, n_micro):
    """N micro-batches with cached features (open_clip's accum-freq) give the loss and the gradient of one
    batch N times larger: every micro-batch sees all negatives, the temperature's gradient counts once."""
    module = fresh_tiny_model.model.train()
    images, texts = _batch(fresh_tiny_model, 16, seed=5)
    big_loss, big = _grads(module, contrastive_losses(module, [(images, texts)]))
    micro = list(zip(images.chunk(n_micro), texts.chunk(n_micro)))
    acc_loss, acc = _grads(module, contrastive_losses(module, micro))
    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    assert set(acc) == set(big)
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-3, atol=1e-6, msg=name)
    # ordinary accumulation (each micro-batch only sees its own negatives) is a different gradient
    naive = [(loss / n_micro, None) for m in micro for loss, _ in contrastive_losses(module, [m])]
    _, naive_grads = _grads(module, iter(naive))
    assert not torch.allclose(naive_grads["logit_scale"], big["logit_scale"], rtol=1e-2)


def _tiny_clip_config(shapes_dir, out, **overrides):
    from clipkit.config import config_from_dict
    from clipkit.train.config import ClipTrainConfig

    base = dict(
        model="shapes-tiny",
        train_data=str(shapes_dir / "train"),
        out_dir=str(out),
        batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        log_every=1,
        num_workers=0,
        progress=False,
        num_threads=1,
        shuffle_buffer=0,
        max_steps=12,
    )
    return config_from_dict(ClipTrainConfig, {**base, **overrides})


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_clip_grad_accum_step_sees_the_whole_batch(shapes_dir, tmp_path):
    """grad_accum=2 x 8 logs, at its first step, the contrastive loss of the 16 samples taken together."""
    from clipkit.train.clip import train_clip

    train_clip(_tiny_clip_config(shapes_dir, tmp_path / "big", max_steps=1))
    train_clip(_tiny_clip_config(shapes_dir, tmp_path / "acc", max_steps=1, batch_size=8, grad_accum=2))
    assert _rows(tmp_path / "acc")[0]["loss"] == pytest.approx(_rows(tmp_path / "big")[0]["loss"], rel=1e-4)


@pytest.mark.slow
def test_clip_bf16_trains_and_resumes(shapes_dir, tmp_path):
    """bf16 autocast through the loop: finite falling loss, fp32 master weights, checkpoint round trip."""
    from safetensors.torch import load_file

    from clipkit.train.clip import train_clip

    config = _tiny_clip_config(
        shapes_dir, tmp_path / "run", mixed_precision="bf16", max_steps=48, batch_size=24, checkpoint_every=24
    )
    summary = train_clip(config)
    rows = _rows(tmp_path / "run")
    losses = [r["loss"] for r in rows]
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses)) and len(losses) == 48
    # chance is ln(24) = 3.18 for a batch of 24: the loss falls from above it to below it
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < math.log(24) - 0.1 < first - 0.1, losses
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    # resume from the step-24 checkpoint: the same final weights as the uninterrupted run
    from clipkit.config import config_from_dict
    from clipkit.train.config import ClipTrainConfig

    step12 = tmp_path / "run" / "checkpoints" / "step_00000024"
    again = config_from_dict(
        ClipTrainConfig, {**config.to_json(), "out_dir": str(tmp_path / "again"), "resume": str(step12)}
    )
    train_clip(again)
    resumed = load_file(str(tmp_path / "again" / "model" / "model.safetensors"))
    for k in weights:
        torch.testing.assert_close(resumed[k], weights[k], rtol=0, atol=0, msg=k)
    assert summary["steps"] == 48


@pytest.mark.parametrize("kind", ["decoder", "prior"])
def test_unclip_bf16_and_accumulation(kind, tiny_model_dir, shapes_dir, tmp_path):
    """Decoder and prior train in bf16 with 2 micro-batches a step: finite loss, EMA export, resumable."""
    import clipkit
    from clipkit.config import config_from_dict
    from clipkit.train.config import DecoderTrainConfig, PriorTrainConfig
    from clipkit.train.unclip import train_decoder, train_prior

    cls, fn = (DecoderTrainConfig, train_decoder) if kind == "decoder" else (PriorTrainConfig, train_prior)
    model = (
        {"decoder": dict(channels=[16, 32], attention_levels=[False, True], heads=2, context_tokens=2)}
        if kind == "decoder"
        else {"prior": dict(width=32, layers=1, heads=2)}
    )
    base = dict(
        clip=str(tiny_model_dir),
        train_data=str(shapes_dir / "train"),
        out_dir=str(tmp_path / kind),
        pipeline_dir=str(tmp_path / "pipe"),
        num_samples=96,
        val_samples=16,
        batch_size=8,
        grad_accum=2,
        max_steps=6,
        checkpoint_every=3,
        log_every=1,
        progress=False,
        num_threads=1,
        mixed_precision="bf16",
        **model,
    )
    summary = fn(config_from_dict(cls, base))
    rows = _rows(tmp_path / kind)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] == r["loss"] and r["loss"] < 1e3 for r in rows)
    assert summary["final_loss"] == rows[-1]["loss"]
    ckpt = tmp_path / kind / "checkpoints" / "step_00000006"
    assert (ckpt / "ema.safetensors").is_file() and (ckpt / "model.safetensors").is_file()
    loaded = clipkit.unclip.load_model(tmp_path / "pipe" / kind, kind)
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
