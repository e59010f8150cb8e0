"""The shapes judge: shipped weights read real images near-perfectly; sharpness, Frechet and diversity behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from clipkit.shapes import judge as J
from clipkit.shapes import world as shapes


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    return J.ShapesJudge.load()


def _real(split, num, size, seed):
    samples = list(shapes.generate(split, num, seed=seed, image_size=size))
    return J.as_tensor([s.image for s in samples]), [s.attributes for s in samples]


# --- the shipped weights ------------------------------------------------------------------------


def test_shipped_weights_are_small_safetensors_and_load():
    from safetensors import safe_open

    weights = J.WEIGHTS_DIR / "model.safetensors"
    assert weights.stat().st_size < 600_000
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["kind"] == J.KIND
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads((J.WEIGHTS_DIR / "config.json").read_text())["kind"] == J.KIND
    judge = J.ShapesJudge.load()
    assert all(torch.equal(v, state[k]) for k, v in judge.net.state_dict().items())
    assert judge.training["seed"] == 0 and judge.training["combinations"] == 3840


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("split", ["val", "holdout"])
def test_shipped_judge_reads_fresh_real_images_per_attribute(judge, split, size):
    x, attrs = _real(split, 300, size, seed=4242)
    acc = judge.agreement(x, attrs)
    assert all(acc[a] >= 0.99 for a in J.ATTRIBUTES), acc


def test_judge_reads_every_combination_of_the_world(judge):
    combos = J._all_combinations()
    acc = judge.agreement([shapes.render(a, 32) for a in combos], combos)
    assert min(acc[a] for a in J.ATTRIBUTES) >= 0.99, acc


def test_agreement_is_exact_on_real_images_with_their_true_attributes(judge):
    x, attrs = _real("val", 64, 32, seed=77)
    assert judge.agreement(x, attrs) == {"mean": 1.0, **{a: 1.0 for a in J.ATTRIBUTES}}
    # Same answer from PIL images, from label dicts, and for a subset of attributes.
    pil = [s.image for s in shapes.generate("val", 64, seed=77)]
    assert judge.agreement(pil, J.labels(attrs, ("shape", "hat"))) == {"mean": 1.0, "shape": 1.0, "hat": 1.0}
    # Wrong targets are caught: every colour shifted by one class.
    wrong = {"color": (J.labels(attrs)["color"] + 1) % 8}
    assert judge.agreement(x, wrong)["color"] == 0.0


def test_real_accuracy_reports_every_split_and_size(judge):
    acc = judge.real_accuracy(num=64)
    assert set(acc) == {"num", "val", "holdout", "val@64", "holdout@64"}
    assert min(acc[k][a] for k in ("val", "holdout", "val@64", "holdout@64") for a in J.ATTRIBUTES) >= 0.99
    assert "worst attribute" in judge.accuracy_line()


# --- sharpness ----------------------------------------------------------------------------------


def test_palette_fraction_exact_on_palette_and_off_palette_colours():
    palette = (J.PALETTE * 2 - 1)[:, :, None, None].expand(12, 3, 16, 16)
    assert J.palette_fraction(palette) == 1.0
    assert J.palette_fraction(torch.full((1, 3, 16, 16), -0.2)) == 0.0  # mid grey 0.4: far from all 12


def test_sharpness_real_above_blurred_and_bicubic(judge):
    x32, attrs = _real("val", 128, 32, seed=5)
    x64 = J.as_tensor([shapes.render(a, 64) for a in attrs])
    real = judge.sharpness(x32)
    assert 0.9 < real["sharpness"] <= 1.05 and real["image_size"] == 32
    blurred = judge.sharpness(gaussian_blur(x32, 5, 1.0), reference=x32)
    assert blurred["sharpness"] < 0.5 * judge.sharpness(x32, reference=x32)["sharpness"]
    assert blurred["palette"] < real["palette"] and blurred["edge_ratio"] < 0.5
    bicubic = judge.sharpness(F.interpolate(x32, scale_factor=2, mode="bicubic").clamp(-1, 1), reference=x64)
    real64 = judge.sharpness(x64)
    assert real64["sharpness"] > 0.9 and bicubic["sharpness"] < 0.7 * real64["sharpness"], (bicubic, real64)
    with pytest.raises(ValueError, match="same resolution"):
        judge.sharpness(x32, reference=x64)


# --- Frechet distance ---------------------------------------------------------------------------


def test_frechet_distance_matches_the_eigenvalue_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = torch.randn(300, 6, generator=g) * 2 + 1
    sa, sb = np.cov(a.double().numpy().T), np.cov(b.double().numpy().T)
    ref = (
        ((a.double().mean(0) - b.double().mean(0)) ** 2).sum().item()
        + np.trace(sa)
        + np.trace(sb)
        - 2 * np.sqrt(np.linalg.eigvals(sa @ sb).real.clip(min=0)).sum()
    )
    assert J.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert J.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_real_near_its_floor_and_blur_far_above(judge):
    x, _ = _real("val", 128, 32, seed=6)
    real = judge.frechet(x)
    assert real["floor"] > 0 and real["ratio"] < 2.0, real
    blurred = judge.frechet(gaussian_blur(x, 5, 1.0))
    assert blurred["ratio"] > 5 * real["ratio"], (blurred, real)


# --- diversity and inputs -----------------------------------------------------------------------


def test_diversity_counts_what_varies(judge):
    one = shapes.render(shapes.ShapeAttributes("star", "red", "large", "left", "white", True))
    same = judge.diversity([one] * 6)
    assert same["pixel_distance"] == pytest.approx(0.0, abs=1e-6)
    assert all(v == 1 for v in same["distinct"].values())
    x, attrs = _real("val", 64, 32, seed=8)
    varied = judge.diversity(x)
    assert varied["distinct"]["color"] == len({a.color for a in attrs}) and varied["pixel_distance"] > 0.05


def test_bad_inputs_name_the_problem(judge):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        judge.predict(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="square"):
        judge.predict(torch.zeros(2, 3, 32, 48))
    with pytest.raises(TypeError, match="PIL"):
        judge.predict(["not an image"])
    with pytest.raises(ValueError, match="unknown attributes"):
        judge.agreement(torch.zeros(1, 3, 32, 32), {"mood": [0]})
    with pytest.raises(ValueError, match="unknown attributes"):
        judge.agreement(torch.zeros(1, 3, 32, 32), [shapes.random_attributes(np.random.default_rng(0))], ["mood"])
    with pytest.raises(ValueError, match="1 images but targets"):
        judge.agreement(torch.zeros(1, 3, 32, 32), {"hat": [0, 1]})
    with pytest.raises(FileNotFoundError, match="train_judge"):
        J.ShapesJudge.load("/nonexistent/judge")


def test_train_judge_is_seeded_learns_and_saves(tmp_path):
    quick = dict(batch_size=64, lr=1e-2, sizes=(32,), progress=False)
    a = J.train_judge(tmp_path / "a", max_steps=30, **quick)
    assert a["final_loss"] < 0.95 * a["initial_loss"], a
    loaded = J.ShapesJudge.load(tmp_path / "a")
    assert loaded.training["steps"] == 30 and loaded.training["final_loss"] == a["final_loss"]
    b, c = (J.train_judge(None, max_steps=3, **quick) for _ in range(2))
    assert b["final_loss"] == c["final_loss"]


# --- wired into the unCLIP evaluation -----------------------------------------------------------


def test_evaluate_unclip_reports_judge_figures_with_clip_beside(tmp_path, tiny_model, tiny_model_dir, judge):
    from clipkit.shapes.unclip_eval import evaluate_unclip
    from clipkit.unclip import DecoderConfig, DecoderUNet, DiffusionPrior, PriorConfig, UnCLIP

    torch.manual_seed(0)
    decoder = DecoderUNet(
        DecoderConfig(
            embed_dim=tiny_model.embed_dim, channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2
        )
    ).eval()
    prior = DiffusionPrior(PriorConfig(embed_dim=tiny_model.embed_dim, width=32, layers=1, heads=2)).eval()
    pipe = UnCLIP(tiny_model, decoder, prior, clip_path=str(tiny_model_dir))
    m = evaluate_unclip(pipe, tmp_path, num=4, steps=2, sweep=(1.0,), diversity_prompts=2, judge=judge, progress=False)
    assert m["judge"]["real_accuracy"]["holdout"]["shape"] >= 0.99 and "worst attribute" in m["judge"]["summary"]
    inv = m["inversion"]
    assert set(inv["agreement"]) == {"mean", *J.ATTRIBUTES} and {"agreement", "cosine"} <= set(inv["clip"])
    assert inv["frechet"]["floor"] > 0 and inv["sharpness"]["image_size"] == 32
    methods = m["text_to_image"]["methods"]
    assert list(methods) == ["direct_text_embedding", "with_prior", "with_prior_bicubic_64"]  # no upsampler here
    assert methods["with_prior_bicubic_64"]["image_size"] == 64
    assert m["text_to_image"]["with_prior"] == methods["with_prior"]["agreement"]
    assert set(methods["with_prior"]["agreement"]) == {"mean", "shape", "color", "size", "position", "hat"}
    assert m["text_to_image"]["diversity"]["real"]["distinct"]["shape"] == 1.0  # one caption, one shape
    assert 0 <= m["hat_arithmetic"]["judged_wearing_hat"] <= 1 and "clip" in m["hat_arithmetic"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    assert (tmp_path / "guidance_sweep.png").stat().st_size > 0
