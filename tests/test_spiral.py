"""The spiral lab: the explainer's claims, asserted with margins, for an exact and a trained denoiser."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from clipkit.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, sample
from clipkit.labs.spiral import (
    QUICK,
    SpiralScorer,
    compare_samplers,
    guidance_experiment,
    run_spiral_lab,
    sample_spiral,
)
from clipkit.labs.spiral.lab import train_lab_models
from clipkit.labs.spiral.spiral import CLASSES, NULL_CLASS, arm_of, spiral_curve, spiral_length


@pytest.fixture(scope="module")
def scorer():
    return SpiralScorer()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    """The quick lab's two denoisers (epsilon + flow), trained once for the whole module."""
    eps_model, flow_model, stats = train_lab_models(QUICK)
    return eps_model, flow_model


@pytest.fixture(scope="module")
def sampler_metrics(models, scorer):
    return compare_samplers(*models, QUICK, scorer)[0]


# --- data and metrics ------------------------------------------------------------------------


def test_data_lies_on_the_spiral_and_noise_does_not(scorer):
    x, labels = sample_spiral(512, torch.Generator().manual_seed(0))
    m = scorer.score(x, labels)
    assert m["distance"] < 0.015 and m["coverage"] > 0.97 and m["arm_fraction"] > 0.97
    noise = scorer.score(torch.randn(512, 2, generator=torch.Generator().manual_seed(1)), labels)
    assert noise["distance"] > 0.15 and noise["arm_fraction"] < 0.25
    assert set(labels.tolist()) == {0, 1, 2}
    assert 8.5 < spiral_length() < 9.5  # 1.5 turns of r = 1.5 theta / 4 pi


def test_classes_split_the_arm_in_equal_thirds():
    _, u = spiral_curve(3000)
    counts = torch.bincount(arm_of(u), minlength=3)
    assert (counts - 1000).abs().max() <= 1
    x, labels = sample_spiral(300, torch.Generator().manual_seed(2), classes=torch.full((300,), 2))
    assert bool((labels == 2).all())
    assert float(x.norm(dim=-1).min()) > 1.0  # "cat" is the outer arm


# --- the claims with the exact denoiser of the spiral (no training: tests the samplers) --------


def exact_eps(schedule: NoiseSchedule, points: torch.Tensor):
    """The optimal epsilon for data spread evenly over `points` (a Gaussian mixture at every t)."""

    def model(x, t, cond=None):
        a, s = schedule.signal_noise(t, x)  # (B, 1) each
        d2 = ((x[:, None, :] - a[:, :, None] * points[None]) ** 2).sum(-1)  # (B, M)
        x0 = torch.softmax(-d2 / (2 * s**2), dim=1) @ points
        return (x - a * x0) / s

    return model


def test_exact_denoiser_claims(scorer):
    s = NoiseSchedule("linear")
    model = exact_eps(s, spiral_curve(400)[0])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ddpm = scorer.score(sample(model, (256, 2), DDPMSampler(s), 1000, generator=gen()))
    flat = scorer.score(sample(model, (256, 2), DDPMSampler(s, variance_type="zero"), 1000, generator=gen()))
    ddim = scorer.score(sample(model, (256, 2), DDIMSampler(s), 50, generator=gen()))
    assert ddpm["distance"] < 0.01 and ddpm["coverage"] > 0.95
    assert ddim["distance"] < 0.01 and abs(ddim["coverage"] - ddpm["coverage"]) < 0.05
    assert flat["coverage"] < 0.15  # every sample heads for the same place


# --- the claims with the trained toy model --------------------------------------------------


def test_ddpm_samples_land_on_the_spiral(sampler_metrics):
    m = sampler_metrics["ddpm_1000"]
    assert m["distance"] < 0.12, m  # noise scores ~0.25, the data 0.008
    assert m["coverage"] > 0.85, m


def test_removing_the_noise_step_collapses_coverage(sampler_metrics):
    full, flat = sampler_metrics["ddpm_1000"], sampler_metrics["ddpm_1000_no_noise"]
    assert flat["coverage"] < 0.2, flat
    assert flat["coverage"] < full["coverage"] - 0.6


def test_ddim50_and_flow16_match_ddpm1000(sampler_metrics):
    ddpm = sampler_metrics["ddpm_1000"]
    for name in ("ddim_50", "flow_16"):
        m = sampler_metrics[name]
        assert abs(m["coverage"] - ddpm["coverage"]) < 0.1, (name, m, ddpm)
        assert abs(m["distance"] - ddpm["distance"]) < 0.05, (name, m, ddpm)
    assert sampler_metrics["ddim_50"]["seconds"] < sampler_metrics["ddpm_1000"]["seconds"]


def test_guidance_puts_more_samples_on_the_requested_arm(models, scorer):
    cfg = replace(QUICK, num_points=600)
    metrics, runs = guidance_experiment(models[0], cfg, scorer, scales=(0.0, 1.0, 2.0))
    uncond, cond, guided = (metrics[f"scale_{s}"]["arm_fraction"] for s in (0, 1, 2))
    assert uncond < 0.4  # the class is ignored: about a third at best
    assert cond > 0.8  # the conditional model alone already helps
    assert guided > cond, metrics
    assert 1 - guided < 0.6 * (1 - cond), metrics  # guidance removes most of the off-arm samples


def test_null_class_is_what_guidance_pushes_against(models):
    eps_model = models[0]
    x = torch.randn(8, 2)
    t = torch.full((8,), 500)
    out_null = eps_model(x, t, torch.full((8,), NULL_CLASS))
    torch.testing.assert_close(eps_model(x, t, None), out_null)
    assert not torch.allclose(eps_model(x, t, torch.zeros(8, dtype=torch.long)), out_null)
    assert len(CLASSES) == 3


# --- outputs ---------------------------------------------------------------------------------


def test_lab_writes_figures_metrics_and_page(tmp_path, models):
    cfg = replace(QUICK, num_points=96, ddpm_steps=100, guidance_steps=40, trajectory_steps=20)
    metrics = run_spiral_lab(tmp_path, config=cfg, models=models)
    expected = ["vector_field.png", "ddpm_trajectory.png", "samplers.png", "guidance.png", "cfg_field.png"]
    assert metrics["figures"] == expected
    for name in expected:
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk["samplers"]) == {"ddpm_100", "ddpm_100_no_noise", "ddim_50", "flow_16"}
    assert set(on_disk["guidance"]) == {"scale_0", "scale_1", "scale_2", "scale_4"}
    assert on_disk["vector_field"]["switch_t"] is not None
    page = (tmp_path / "index.html").read_text()
    assert all(f"src='{name}'" in page for name in expected) and page.count("<figcaption>") == 5
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_cli_and_script_are_wired():
    from clipkit.cli import build_parser

    args = build_parser().parse_args(["spiral", "--out", "somewhere", "--quick", "--seed", "3"])
    assert args.out == "somewhere" and args.quick and args.seed == 3 and callable(args.func)


@pytest.mark.slow
def test_clipkit_spiral_quick_end_to_end(tmp_path, capsys):
    from clipkit.cli import main

    assert main(["spiral", "--out", str(tmp_path / "lab"), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "ddpm_1000_no_noise" in out and "guidance 4" in out
    metrics = json.loads((tmp_path / "lab" / "metrics.json").read_text())
    assert metrics["samplers"]["ddpm_1000"]["coverage"] > 0.85
