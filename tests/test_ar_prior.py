"""unCLIP's autoregressive prior: codebook, causal exactness, learning, UnCLIP drop-in, training through the loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipkit.unclip.ar_prior import ArPrior, CausalTransformer, KVCache, causal_mask
from clipkit.unclip.config import ArPriorConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(width=32, layers=2, heads=2, cond_tokens=2)


def _prior(d=16, p=4, bins=32, seed=0) -> ArPrior:
    torch.manual_seed(seed)
    return ArPrior(ArPriorConfig(embed_dim=d, components=p, bins=bins, **TINY))


def _low_rank(n=2048, d=16, rank=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # in a 4-D subspace
    return F.normalize(torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g), dim=-1)


def test_codebook_keeps_a_low_rank_world_and_buckets_hold_equal_mass():
    prior = _prior(bins=64)
    e = _low_rank()
    fit = prior.fit_codebook(e)
    assert fit["explained_variance"] > 0.98 and fit["reconstruction_cosine"] > 0.999
    tokens = prior.quantize(e)  # (N, P) in [0, bins)
    assert tokens.shape == (2048, 4) and tokens.min() >= 0 and tokens.max() < 64
    counts = torch.stack([torch.bincount(tokens[:, j], minlength=64) for j in range(4)])
    assert (counts - 2048 // 64).abs().max() <= 2  # equal-mass buckets: 32 +- 2 each
    assert prior.explained_variance[0] >= prior.explained_variance[-1]  # leading components first
    with pytest.raises(ValueError, match="components=4 but 3 embeddings"):
        _prior().fit_codebook(e[:3])
    with pytest.raises(ValueError, match=r"expected \(N >= 2, 16\)"):
        _prior().fit_codebook(torch.randn(10, 8))


def test_causal_trunk_cache_equals_full_pass():
    torch.manual_seed(0)
    net = CausalTransformer(16, 2, 2).eval()
    x = torch.randn(3, 7, 16)
    full = net(x)  # fused causal path
    masked = net(x, mask=causal_mask(7))  # explicit mask, same thing
    cache = KVCache()
    steps = torch.cat([net(x[:, :3], cache=cache)] + [net(x[:, i : i + 1], cache=cache) for i in range(3, 7)], 1)
    torch.testing.assert_close(masked, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-5)
    assert len(cache) == 7
    with pytest.raises(ValueError, match=r"expected \(1, 8\)"):
        net(x[:, :1], mask=torch.ones(1, 3, dtype=torch.bool), cache=cache)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_kv_cache_sampling_gives_the_same_tokens_as_recomputation(guidance):
    prior = _prior().eval()
    prior.fit_codebook(_low_rank())
    text = F.normalize(torch.randn(5, 16), dim=-1)
    a, ta = prior.sample(text, guidance, generator=torch.Generator().manual_seed(1), return_tokens=True)
    b, tb = prior.sample(
        text, guidance, generator=torch.Generator().manual_seed(1), use_cache=False, return_tokens=True
    )
    assert torch.equal(ta, tb) and torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(5))
    # a later component never changes the logits of an earlier one (teacher forcing is causal)
    tokens = prior.quantize(_low_rank()[:5])
    changed = tokens.clone()
    changed[:, 2] = (changed[:, 2] + 7) % 32
    la, lb = prior(tokens, text), prior(changed, text)
    torch.testing.assert_close(la[:, :3], lb[:, :3])
    assert not torch.allclose(la[:, 3:], lb[:, 3:])


def test_ar_prior_learns_text_to_image_classes_through_the_loop(tmp_path):
    """Four texts, four clusters of image embeddings: after training through clipkit.train.trainer, sampling
    a text lands next to its own cluster."""
    from clipkit.labs.genlab.train import LabTrainConfig, train_lab_model

    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(4, 16, generator=g), dim=-1)
    texts = F.normalize(torch.randn(4, 16, generator=g), dim=-1)
    label = torch.arange(1024) % 4
    images = F.normalize(protos[label] + 0.05 * torch.randn(1024, 16, generator=g), dim=-1)
    prior = _prior(bins=32)
    prior.fit_codebook(images)

    def loss(net, idx, gen):
        drop = torch.rand(len(idx), generator=gen) < 0.1
        return net.loss(images[idx], texts[label[idx]], drop=drop)

    trained, stats = train_lab_model(
        prior,
        loss,
        len(images),
        LabTrainConfig(
            out_dir=str(tmp_path / "run"),
            max_steps=150,
            time_budget=None,
            batch_size=64,
            lr=5e-3,
            warmup_steps=5,
            ema_decay=0.9,
        ),
    )
    assert stats["final_loss"] < stats["first_loss"] - 0.3  # the floor is the noise within a cluster (~log 8)
    z = trained.sample(texts.repeat_interleave(8, 0), guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    nearest = (z @ protos.T).argmax(1)
    assert (nearest == torch.arange(4).repeat_interleave(8)).float().mean() >= 0.9
    assert (z * protos.repeat_interleave(8, 0)).sum(-1).mean() > 0.9


def test_unclip_takes_the_ar_prior_as_a_drop_in(tiny_model, tmp_path):
    import clipkit
    from clipkit.unclip.pipeline import UnCLIP

    prior = _prior(d=tiny_model.embed_dim, p=8, bins=16)
    captions = [f"a {c} circle number {i}" for c in ("red", "blue") for i in range(12)]
    prior.fit_codebook(tiny_model.encode_texts(captions))
    pipe = UnCLIP(tiny_model, None, prior)
    text = tiny_model.encode_texts(["a red circle", "a blue star"])
    z = pipe.prior_sample(text, guidance_scale=2.0, candidates=3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, tiny_model.embed_dim)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    pipe.save(tmp_path / "p")
    assert (tmp_path / "p" / "ar_prior" / "model.safetensors").is_file() and not (tmp_path / "p" / "prior").exists()
    assert json.loads((tmp_path / "p" / "ar_prior" / "config.json").read_text())["kind"] == "ar_prior"
    loaded = clipkit.UnCLIP.load(tmp_path / "p", clip=tiny_model)  # the only prior there: taken
    assert isinstance(loaded.prior, ArPrior)
    torch.testing.assert_close(loaded.prior.pca_basis, prior.pca_basis)  # the codebook travels in safetensors
    again = loaded.prior_sample(text, guidance_scale=2.0, candidates=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, z)
    assert isinstance(clipkit.UnCLIP.load(tmp_path / "p", clip=tiny_model, prior="ar").prior, ArPrior)
    with pytest.raises(FileNotFoundError, match="no prior/"):
        clipkit.UnCLIP.load(tmp_path / "p", clip=tiny_model, prior="diffusion")
    with pytest.raises(ValueError, match="prior='autoregressive'"):
        clipkit.UnCLIP.load(tmp_path / "p", clip=tiny_model, prior="autoregressive")


def test_train_ar_prior_saves_resumes_and_loads_beside_the_diffusion_prior(tiny_model_dir, shapes_dir, tmp_path):
    import clipkit
    from clipkit.config import config_from_dict
    from clipkit.train.config import ArPriorTrainConfig, PriorTrainConfig
    from clipkit.train.unclip import train_ar_prior, train_prior
    from clipkit.unclip.prior import DiffusionPrior

    common = dict(
        clip=str(tiny_model_dir),
        pipeline_dir=str(tmp_path / "pipe"),
        num_samples=160,
        val_samples=16,
        train_data=str(shapes_dir / "train"),
        batch_size=32,
        progress=False,
        num_threads=1,
        log_every=1,
    )
    cfg = ArPriorTrainConfig(
        out_dir=str(tmp_path / "ar"),
        max_steps=4,
        checkpoint_every=2,
        ar_prior=dict(components=8, bins=64, **TINY),
        **common,
    )
    summary = train_ar_prior(cfg)
    assert summary["steps"] == 4 and -1 <= summary["val_cosine_prior"] <= 1
    assert summary["codebook"]["reconstruction_cosine"] > 0.9
    assert (tmp_path / "ar" / "ar_prior" / "model.safetensors").is_file()
    train_ar_prior(config_from_dict(ArPriorTrainConfig, {**cfg.to_json(), "max_steps": 6, "resume": "latest"}))
    rows = map(json.loads, (tmp_path / "ar" / "metrics.jsonl").read_text().splitlines())
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    train_prior(
        PriorTrainConfig(out_dir=str(tmp_path / "diff"), max_steps=2, prior=dict(width=32, layers=1, heads=2), **common)
    )
    both = tmp_path / "pipe"
    assert isinstance(clipkit.UnCLIP.load(both).prior, DiffusionPrior)  # default: prior/ when present
    ar = clipkit.UnCLIP.load(both, prior="ar")
    assert isinstance(ar.prior, ArPrior)
    assert ar.embed(text="a red circle", seed=0).shape == (ar.clip.embed_dim,)


def test_cli_train_ar_prior_parses():
    from clipkit.cli import build_parser
    from clipkit.cli.commands.train import config_from_args

    args = build_parser().parse_args(
        [
            "train-ar-prior",
            "--train-data",
            "x",
            "--ar-prior.components",
            "16",
            "--ar-prior.bins",
            "256",
            "--max-steps",
            "7",
        ]
    )
    config = config_from_args(args.config_cls, args)
    assert config.ar_prior.components == 16 and config.ar_prior.bins == 256 and config.max_steps == 7
    args = build_parser().parse_args(
        ["train-ar-prior", "--train-data", "x", "--ar-prior.width", "30", "--ar-prior.heads", "4"]
    )
    with pytest.raises(ValueError, match="width=30 is not divisible by heads=4"):
        config_from_args(args.config_cls, args)
