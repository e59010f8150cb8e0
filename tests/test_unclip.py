"""unCLIP: decoder / prior networks, the UnCLIP pipeline, save/load, guidance, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipkit.config import config_from_dict
from clipkit.unclip import DecoderConfig, DecoderUNet, DiffusionPrior, PriorConfig, UnCLIP
from clipkit.unclip.pipeline import slerp

TINY_DECODER = dict(channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2)


def _jitter(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make a fresh net output constants; nudge every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir, tiny_model):
    torch.manual_seed(0)
    decoder = _jitter(DecoderUNet(DecoderConfig(embed_dim=tiny_model.embed_dim, **TINY_DECODER)))
    prior = _jitter(DiffusionPrior(PriorConfig(embed_dim=tiny_model.embed_dim, width=32, layers=1, heads=2)))
    return UnCLIP(tiny_model, decoder, prior, clip_path=str(tiny_model_dir))


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v"])
@pytest.mark.parametrize(
    "image_size,channels,attn", [(32, (16, 32), (False, True)), (64, (16, 32, 32), (False, False, True))]
)
def test_decoder_shapes_and_dtypes(prediction, image_size, channels, attn):
    cfg = DecoderConfig(
        embed_dim=24, image_size=image_size, channels=channels, attention_levels=attn, heads=2, prediction=prediction
    )
    net = _jitter(DecoderUNet(cfg))
    x = torch.randn(3, 3, image_size, image_size)
    emb = F.normalize(torch.randn(3, 24), dim=-1)
    out = net(x, torch.tensor([0, 500, 999]), emb)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # fractional (flow-mapped) and scalar timesteps work too
    assert net(x, torch.tensor(10.5), emb).shape == x.shape
    # dropped rows see exactly the learned null embedding
    drop = torch.tensor([True, False, True])
    dropped = net(x, torch.tensor([3, 3, 3]), emb, drop=drop)
    null = net(x, torch.tensor([3, 3, 3]), net.null_embedding(3))
    assert torch.allclose(dropped[drop], null[drop], atol=1e-5)
    assert not torch.allclose(dropped[~drop], null[~drop], atol=1e-4)


def test_decoder_rejects_bad_input_and_config():
    net = DecoderUNet(DecoderConfig(embed_dim=8, **TINY_DECODER))
    with pytest.raises(ValueError, match="image_embed"):
        net(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), torch.randn(2, 9))
    with pytest.raises(ValueError, match="prediction"):
        DecoderConfig(prediction="x_naught")
    with pytest.raises(ValueError, match="attention_levels"):
        DecoderConfig(channels=(8, 16), attention_levels=(True,))
    cfg = DecoderConfig(embed_dim=8, **TINY_DECODER)
    assert config_from_dict(DecoderConfig, json.loads(json.dumps(cfg.to_json()))) == cfg


def test_prior_shapes_and_null():
    prior = _jitter(DiffusionPrior(PriorConfig(embed_dim=16, width=32, layers=2, heads=2)))
    z = torch.randn(5, 16)
    text = F.normalize(torch.randn(5, 16), dim=-1)
    out = prior(z, torch.randint(0, 1000, (5,)), text)
    assert out.shape == (5, 16) and out.dtype == torch.float32
    drop = torch.tensor([True] * 5)
    assert torch.allclose(
        prior(z, torch.tensor(7), text, drop=drop), prior(z, torch.tensor(7), prior.null_embedding(5)), atol=1e-5
    )
    # causal: the text token cannot see the noised embedding, the query sees everything
    assert prior.causal[0, 2] == float("-inf") and prior.causal[3, :].eq(0).all()
    with pytest.raises(ValueError, match="text_embed"):
        prior(z, torch.tensor(1), text[:, :8])


def test_slerp_endpoints_and_norm():
    a, b = F.normalize(torch.randn(16), dim=0), F.normalize(torch.randn(16), dim=0)
    out = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(out[0], a, atol=1e-5) and torch.allclose(out[-1], b, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("sampler,steps", [("ddim", 4), ("ddpm", 6), ("flow", 4)])
def test_decode_every_sampler(pipe, sampler, steps):
    emb = pipe.clip.encode_texts(["a red circle", "a blue star"])
    x = pipe.decode(emb, steps=steps, sampler=sampler, output="tensor")
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0
    images = pipe.decode(emb, steps=steps, sampler=sampler)
    assert [im.size for im in images] == [(32, 32)] * 2 and images[0].mode == "RGB"


def test_generate_variations_interpolate_trajectory(pipe, tmp_path):
    from PIL import Image

    images = pipe.generate(["a red circle", "a green square"], num_images=2, steps=3, prior_steps=4)
    assert len(images) == 4 and all(isinstance(im, Image.Image) for im in images)
    images[0].save(tmp_path / "a.png")
    assert len(pipe.variations(tmp_path / "a.png", n=3, steps=3)) == 3
    # same starting noise and same endpoints -> identical frames
    same = pipe.interpolate(image=(str(tmp_path / "a.png"), tmp_path / "a.png"), n=3, steps=3, output="tensor")
    assert (same[0] - same[2]).abs().max() < 1e-3, (same[0] - same[2]).abs().max()
    inter = pipe.interpolate(text=("a red circle", "a blue star"), n=4, steps=3, output="tensor", seed=0)
    assert inter.shape == (4, 3, 32, 32)
    # mixed endpoints go through embed; the same seed gives the same frames
    ends = (pipe.embed(image=images[0]), pipe.embed(text="a blue star", seed=1))
    mixed = [pipe.interpolate(embeddings=ends, n=3, steps=3, output="tensor", seed=2) for _ in range(2)]
    assert torch.equal(mixed[0], mixed[1])
    images, traj = pipe.generate("a red circle", num_images=2, steps=5, prior_steps=4, return_trajectory=True)
    assert traj.x.shape == (6, 2, 3, 32, 32) and traj.x0.shape == (5, 2, 3, 32, 32)


def test_guidance_scale_one_is_the_conditional_branch(pipe):
    emb = pipe.clip.encode_texts(["a red circle", "a blue star"])
    plain = pipe.decode(emb, steps=4, guidance_scale=1.0, output="tensor", seed=3)
    # a scale a hair above 1 goes through the batched cond/uncond path: (almost) the same result
    batched = pipe.decode(emb, steps=4, guidance_scale=1.0 + 1e-6, output="tensor", seed=3)
    assert torch.allclose(plain, batched, atol=1e-4)
    # and it is the bare network conditioned on emb, sampled by hand
    from clipkit.diffusion import sample
    from clipkit.unclip.samplers import make_sampler

    by_hand = sample(
        pipe.decoder,
        (2, 3, 32, 32),
        make_sampler("ddim", pipe.decoder_schedule, "sample"),
        4,
        cond=F.normalize(emb, dim=-1),
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.allclose(plain, by_hand.clamp(-1, 1), atol=1e-5)
    guided = pipe.decode(emb, steps=4, guidance_scale=4.0, output="tensor", seed=3)
    assert not torch.allclose(plain, guided, atol=1e-3)


def test_negative_prompt_changes_output(pipe):
    kw = dict(num_images=2, steps=4, prior_steps=4, seed=5, output="tensor")
    base = pipe.generate("a red circle", **kw)
    again = pipe.generate("a red circle", **kw)
    negative = pipe.generate("a red circle", negative_prompt="a blue star", **kw)
    assert torch.equal(base, again)
    assert (base - negative).abs().mean() > 1e-3


def test_one_rng_argument_generator_with_seed_as_a_shortcut(pipe):
    emb = pipe.clip.encode_texts(["a red circle"])
    kw = dict(steps=3, sampler="ddpm", output="tensor")  # ddpm: the generator feeds every step
    by_seed = pipe.decode(emb, seed=4, **kw)
    assert torch.equal(by_seed, pipe.decode(emb, generator=torch.Generator().manual_seed(4), **kw))
    assert not torch.equal(by_seed, pipe.decode(emb, seed=5, **kw))
    gen = dict(num_images=1, steps=3, prior_steps=3, output="tensor")
    assert torch.equal(
        pipe.generate("a red circle", seed=4, **gen),
        pipe.generate("a red circle", generator=torch.Generator().manual_seed(4), **gen),
    )
    with pytest.raises(ValueError, match="generator= or seed=, not both"):
        pipe.decode(emb, seed=1, generator=torch.Generator(), **kw)
    with pytest.raises(TypeError, match="torch.Generator, got int; for a seed pass seed="):
        pipe.generate("a red circle", generator=3, **gen)


def test_explicit_image_and_text_never_guess(pipe, tmp_path):
    missing = tmp_path / "cirlce.png"  # a typo: must not become a text prompt
    for call in (
        lambda: pipe.embed(str(missing)),
        lambda: pipe.embed(image=missing),
        lambda: pipe.variations(str(missing), n=2, steps=2),
        lambda: pipe.interpolate(image=(missing, missing), n=2, steps=2),
    ):
        with pytest.raises(FileNotFoundError, match="cirlce.png"):
            call()
    assert not missing.exists()
    with pytest.raises(TypeError, match="exactly one of image= .* or text="):
        pipe.embed(image=missing, text="a red circle")
    with pytest.raises(TypeError, match="by keyword: image=\\(a, b\\).*'a red circle'"):
        pipe.interpolate("a red circle", "a blue star")
    with pytest.raises(TypeError, match="one pair"):
        pipe.interpolate(image=("a.png",))
    # a text goes through the prior: the same generator state gives the same embedding as prior_sample
    text = pipe.embed(text="a red circle", seed=7)
    direct = pipe.prior_sample(pipe.clip.encode_texts(["a red circle"]), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(text, direct[0]) and text.shape == (pipe.clip.embed_dim,)


def test_prior_only_pipeline_samples_and_refuses_to_decode(pipe, tmp_path):
    prior_only = UnCLIP(pipe.clip, decoder=None, prior=pipe.prior, clip_path=pipe.clip_path)
    text = pipe.clip.encode_texts(["a red circle"])
    a = prior_only.prior_sample(text, steps=3, seed=0)
    assert torch.equal(a, pipe.prior_sample(text, steps=3, seed=0))
    for call in (lambda: prior_only.decode(a), lambda: prior_only.generate("a red circle", steps=2, prior_steps=2)):
        with pytest.raises(ValueError, match="no decoder"):
            call()
    prior_only.save(tmp_path / "p")
    assert not (tmp_path / "p" / "decoder").exists()
    loaded = UnCLIP.load(tmp_path / "p")
    assert loaded.decoder is None and torch.equal(loaded.prior_sample(text, steps=3, seed=0), a)
    with pytest.raises(ValueError, match="no prior"):
        UnCLIP(pipe.clip, decoder=pipe.decoder).prior_sample(text)
    with pytest.raises(ValueError, match="neither"):
        UnCLIP(pipe.clip)
    UnCLIP(pipe.clip, prior=pipe.prior).save(tmp_path / "no-path")  # no CLIP path recorded: say so
    with pytest.raises(FileNotFoundError, match="pass clip="):
        UnCLIP.load(tmp_path / "no-path")


def test_prior_sample_unit_norm_and_best_candidate(pipe):
    text = pipe.clip.encode_texts(["a red circle", "a hat"])
    g = torch.Generator().manual_seed(0)
    emb = pipe.prior_sample(text, steps=4, candidates=3, generator=g)
    assert emb.shape == (2, pipe.clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    # the kept candidate has the best dot product among those drawn with the same stream
    g = torch.Generator().manual_seed(0)
    rep = F.normalize(text, dim=-1).repeat_interleave(3, 0)
    from clipkit.diffusion import sample
    from clipkit.unclip.samplers import make_sampler

    s = make_sampler(
        "ddim", pipe.prior_schedule, "sample", clip_x0=lambda z: F.normalize(z, dim=-1) * pipe.prior.config.scale
    )
    z = F.normalize(
        sample(
            pipe.prior,
            (6, pipe.clip.embed_dim),
            s,
            4,
            cond=rep,
            uncond=pipe.prior.null_embedding(1),
            guidance_scale=2.0,
            generator=g,
        ),
        dim=-1,
    ).view(2, 3, -1)
    dots = (z * F.normalize(text, dim=-1)[:, None]).sum(-1)
    assert torch.allclose(emb, z[torch.arange(2), dots.argmax(1)], atol=1e-5)


def test_save_load_round_trip_and_mismatched_clip(pipe, tmp_path, tiny_model_dir):
    import clipkit

    pipe.save(tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / "unclip.json").read_text())
    assert manifest["clip"]["identity"] == pipe.clip.identity
    assert (tmp_path / "p" / "decoder" / "model.safetensors").is_file()
    loaded = clipkit.UnCLIP.load(tmp_path / "p")
    kw = dict(num_images=2, steps=4, prior_steps=4, seed=11, output="tensor")
    assert torch.equal(pipe.generate("a red circle", **kw), loaded.generate("a red circle", **kw))
    other = clipkit.create("shapes-tiny", seed=1)
    with pytest.raises(ValueError, match="does not match"):
        clipkit.UnCLIP.load(tmp_path / "p", clip=other)
    other.save(tmp_path / "other-clip")
    with pytest.raises(ValueError, match="does not match"):
        clipkit.UnCLIP.load(tmp_path / "p", clip=tmp_path / "other-clip")
    with pytest.raises(FileNotFoundError, match="unclip.json"):
        clipkit.UnCLIP.load(tmp_path)


def test_decode_rejects_bad_embeddings(pipe):
    with pytest.raises(ValueError, match="image_embeddings"):
        pipe.decode(torch.randn(2, 5))
    with pytest.raises(ValueError, match="sampler"):
        pipe.decode(torch.randn(1, pipe.clip.embed_dim), sampler="euler")


def test_cli_generate_writes_grid_and_trajectory(pipe, tmp_path):
    from clipkit.cli import main

    pipe.save(tmp_path / "p")
    rc = main(
        [
            "generate",
            "--pipeline",
            str(tmp_path / "p"),
            "--prompt",
            "a red circle",
            "--num",
            "3",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--trajectory",
            "--sampler",
            "flow",
        ]
    )
    assert rc == 0
    assert (tmp_path / "out" / "grid.png").is_file() and (tmp_path / "out" / "trajectory.png").is_file()
    assert len(list((tmp_path / "out").glob("0*.png"))) == 3
    rc = main(["generate", "--pipeline", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "o2")])
    assert rc == 2
    (tmp_path / "out" / "000.png").rename(tmp_path / "a.png")
    rc = main(
        [
            "generate",
            "--pipeline",
            str(tmp_path / "p"),
            "--interpolate",
            str(tmp_path / "a.png"),
            "text:a blue star",
            "--num",
            "3",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o3"),
        ]
    )
    assert rc == 0 and len(list((tmp_path / "o3").glob("0*.png"))) == 3
    rc = main(
        ["generate", "--pipeline", str(tmp_path / "p"), "--variations", "a blue star", "--out", str(tmp_path / "o4")]
    )
    assert rc == 2 and not (tmp_path / "o4").exists()  # not an image file: an error, never a prompt


def test_render_expression_with_added_vector(pipe, tmp_path):
    img = pipe.decode(pipe.clip.encode_texts(["a red circle"]), steps=2)[0]
    img.save(tmp_path / "c.png")
    np.save(tmp_path / "hat.npy", np.ones(pipe.clip.embed_dim, dtype=np.float32) * 0.1)
    expr = f'img:"{tmp_path / "c.png"}" + 0.5*text:"a hat"'
    plain = pipe.render_expression(expr, num_images=2, steps=3, output="tensor")
    moved = pipe.render_expression(expr, num_images=2, steps=3, output="tensor", add_vector=tmp_path / "hat.npy")
    assert plain.shape == moved.shape == (2, 3, 32, 32) and not torch.allclose(plain, moved)
    with pytest.raises(ValueError, match="add_vector"):
        pipe.render_expression(expr, add_vector=np.ones(3))


def test_bf16_sampling_stays_close_to_fp32(pipe):
    """precision="bf16" runs the decoder under autocast; same noise, same sampler: nearly the same images."""
    emb = pipe.clip.encode_texts(["a red circle", "a blue star"])
    full = pipe.decode(emb, steps=4, seed=0, output="tensor")
    half = pipe.decode(emb, steps=4, seed=0, output="tensor", precision="bf16")
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert float((half - full).abs().mean()) < 0.05
    with pytest.raises(ValueError, match="precision='int8'"):
        pipe.decode(emb, steps=2, seed=0, precision="int8")


# ----------------------------------------------------------------------------- decoder recipe levers (issue 12)


def test_schedule_shift_divides_the_snr_by_shift_squared():
    from clipkit.diffusion import NoiseSchedule

    base, shifted = NoiseSchedule("cosine"), NoiseSchedule("cosine", shift=2.0)
    t = torch.arange(0, 1000, 37)
    assert torch.allclose(shifted.snr(t), base.snr(t) / 4, rtol=1e-9)
    assert torch.equal(NoiseSchedule("cosine", shift=1.0).betas, base.betas)
    assert bool((shifted.betas > 0).all()) and bool((shifted.betas < 1).all())
    assert "shift=2.0" in repr(shifted)
    with pytest.raises(ValueError, match="shift"):
        NoiseSchedule("cosine", shift=0.0)
    # the decoder config's shift is the schedule the pipeline samples with
    from clipkit.unclip.samplers import noise_schedule

    assert noise_schedule(DecoderConfig(schedule_shift=2.0)).shift == 2.0


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_min_snr_weights_match_the_paper(prediction):
    from clipkit.diffusion import NoiseSchedule, loss_weights

    schedule = NoiseSchedule("cosine")
    t = torch.tensor([0, 100, 400, 700, 999])
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])  # brute force, float64
    capped = torch.minimum(snr, torch.full_like(snr, 5.0))
    expected = {"epsilon": capped / snr, "v": capped / (snr + 1), "sample": capped}[prediction]
    assert torch.allclose(loss_weights(schedule, t, prediction, "min_snr", 5.0), expected.float())
    assert torch.equal(loss_weights(schedule, t, prediction), torch.ones(5))
    # floor 1: the noisy end keeps the plain x0 weight, the clean end is capped at gamma (in x0 terms)
    floored = loss_weights(schedule, t, "sample", "min_snr", 5.0, floor=1.0)
    assert torch.allclose(floored, snr.clamp(1.0, 5.0).float()) and floored[-1] == 1.0 and floored[0] == 5.0
    with pytest.raises(ValueError, match="weighting"):
        loss_weights(schedule, t, prediction, "p2")
    with pytest.raises(ValueError, match="floor"):
        loss_weights(schedule, t, prediction, "min_snr", 5.0, floor=6.0)


def test_weighted_mse_is_the_per_sample_weighted_mean():
    from clipkit.diffusion import weighted_mse

    out, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.allclose(weighted_mse(out, target), F.mse_loss(out, target))
    w = torch.tensor([0.0, 1.0, 3.0])
    per = ((out - target) ** 2).flatten(1).mean(1)
    assert torch.allclose(weighted_mse(out, target, w), (per * w).mean())
    with pytest.raises(ValueError, match="differs"):
        weighted_mse(out, target[:, :1])


def test_dynamic_threshold_matches_imagen_reference():
    from clipkit.diffusion import DynamicThreshold
    from clipkit.diffusion.base import make_x0_transform
    from clipkit.unclip.samplers import pixel_clip

    g = torch.Generator().manual_seed(0)
    x0 = torch.cat(
        [
            torch.rand(1, 3, 8, 8, generator=g) * 1.8 - 0.9,  # inside [-1, 1]: untouched
            torch.randn(2, 3, 8, 8, generator=g) * 2.0,
        ]
    )  # outside: rescaled
    got = DynamicThreshold(0.995)(x0)
    ref = []
    for x in x0.numpy():  # Imagen, eq. in section 2.3
        s = max(np.percentile(np.abs(x).reshape(-1), 99.5), 1.0)
        ref.append(np.clip(x, -s, s) / s)
    assert torch.allclose(got, torch.from_numpy(np.stack(ref)), atol=1e-6)
    assert torch.equal(got[0], x0[0]) and float(got.abs().max()) <= 1.0
    assert isinstance(make_x0_transform("dynamic"), DynamicThreshold)
    with pytest.raises(ValueError, match="percentile"):
        DynamicThreshold(1.5)
    # the decoder config's default and decode(dynamic_threshold=...) choose the clip
    assert pixel_clip(DecoderConfig()) == 1.0 and pixel_clip(DecoderConfig(dynamic_threshold=0.99)).percentile == 0.99
    assert pixel_clip(DecoderConfig(dynamic_threshold=0.99), False) == 1.0


def test_decode_with_dynamic_threshold_stays_in_range(pipe):
    emb = pipe.clip.encode_texts(["a red circle"])
    x = pipe.decode(emb, steps=3, seed=0, output="tensor", dynamic_threshold=0.995, guidance_scale=8.0)
    assert x.shape == (1, 3, 32, 32) and float(x.abs().max()) <= 1.0
