"""The judge for any labelled data: it learns real labels, identifies, and its measures rank what they should."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import gaussian_blur

from clipkit.data.shards import write_shards
from clipkit.evaluation import image_stats as S
from clipkit.evaluation.judge import Judge, JudgeConfig, JudgeNet, as_tensor, default_widths
from clipkit.evaluation.judge_score import read_label_file, report_lines, score_folder
from clipkit.evaluation.judge_train import JudgeTrainConfig, read_labelled, train_judge

KINDS = ("disc", "square", "triangle", "cross", "ring", "bar")
COLOURS = [(220, 40, 40), (40, 90, 220), (40, 160, 70), (230, 190, 30), (140, 60, 170)]
BACKS = [(245, 245, 245), (120, 120, 120), (30, 30, 30)]


class _Sample:
    def __init__(self, key, image, caption, meta):
        self.key, self.image, self.caption, self.meta = key, image, caption, meta

    def metadata(self):
        return dict(self.meta)


def _draw(kind: str, colour, back, dx: int, dy: int, r: float, size: int = 32) -> Image.Image:
    big = size * 4
    im = Image.new("RGB", (big, big), back)
    d = ImageDraw.Draw(im)
    cx, cy, r = big / 2 + 4 * dx, big / 2 + 4 * dy, r * big
    if kind == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif kind == "cross":
        d.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=colour)
        d.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=colour)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=int(r / 3))
    else:
        d.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=colour)
    return im.resize((size, size), Image.Resampling.BOX)


def _samples(num: int, seed: int, size: int = 32) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        kind = KINDS[i % len(KINDS)]
        colour, back = COLOURS[rng.integers(len(COLOURS))], BACKS[rng.integers(len(BACKS))]
        image = _draw(
            kind, colour, back, int(rng.integers(-2, 3)), int(rng.integers(-2, 3)), rng.uniform(0.22, 0.32), size
        )
        out.append(_Sample(f"{seed:02d}{i:05d}", image, f"a {kind}", {"name": kind, "background": str(back)}))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_shards(_samples(480, seed=1), root / "train", shard_size=200)
    write_shards(_samples(120, seed=2), root / "val")
    return root


@pytest.fixture(scope="module")
def trained(data) -> tuple[Judge, dict]:
    torch.set_num_threads(1)
    config = JudgeTrainConfig(
        train_data=str(data / "train"),
        val_data=str(data / "val"),
        label_field=["name"],
        out_dir=str(data / "run"),
        max_steps=120,
        batch_size=32,
        lr=3e-3,
        warmup_steps=10,
        progress=False,
        log_every=20,
    )
    record = train_judge(config)
    return Judge.load(data / "run"), record


def _real(data: Path, split: str = "val"):
    real = read_labelled(str(data / split), ["name"], None)
    return real, real["pixels"].float() / 127.5 - 1


# --- learning ------------------------------------------------------------------------------------


def test_judge_learns_a_tiny_labelled_set_well_above_chance(trained, data):
    judge, record = trained
    acc = record["real_accuracy"]["name"]
    assert acc["chance"] == pytest.approx(1 / 6) and acc["num"] == 120 and acc["unknown"] == 0
    assert acc["top1"] >= 0.6, acc  # chance 0.17
    assert record["final_loss"] < 0.8 * record["initial_loss"] and record["steps"] == 120
    assert judge.classes == {"name": tuple(sorted(KINDS))} and judge.net.config.image_size == 32
    assert judge.training["real_accuracy"] == record["real_accuracy"]  # saved with the judge
    assert "name top-1" in judge.accuracy_line()
    assert (data / "run" / "metrics.jsonl").is_file() and (data / "run" / "summary.json").is_file()


def test_identification_is_high_for_real_images_and_chance_for_shuffled_labels(trained, data):
    judge, record = trained
    real, x = _real(data)
    right = judge.identify(x, real["labels"])["name"]
    assert right["top1"] == pytest.approx(record["real_accuracy"]["name"]["top1"]) and right["top5"] >= right["top1"]
    shuffled = list(np.random.default_rng(0).permutation(real["labels"]["name"]))
    wrong = judge.identify(x, {"name": shuffled})["name"]
    assert wrong["top1"] < 0.35 and wrong["top1"] < right["top1"] - 0.3, (wrong, right)
    unknown = judge.identify(x[:4], {"name": ["disc", "hexagon", "ring", "star"]})["name"]
    assert unknown["num"] == 2 and unknown["unknown"] == 2  # labels it never saw are counted apart


def test_saved_judge_round_trips_and_reads_any_size(trained, data, tmp_path):
    judge, _ = trained
    _, x = _real(data)
    again = Judge.load(judge.save(tmp_path / "copy"))
    assert all(np.array_equal(a, b) for a, b in zip(judge.predict(x).values(), again.predict(x).values()))
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")  # 64 px: area-averaged back to 32
    assert np.array_equal(judge.predict(big)["name"], judge.predict(x)["name"])
    with pytest.raises(FileNotFoundError, match="clipkit judge train"):
        Judge.load(tmp_path / "nothing")


# --- the measures --------------------------------------------------------------------------------


def _speckle(x: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=g) < fraction).float()
    return x * (1 - mask) + mask * (torch.rand(x.shape, generator=g) * 2 - 1)


@pytest.mark.parametrize("size", [32, 64])
def test_noise_measure_cannot_be_fooled_by_speckle(size):
    pool = as_tensor([s.image for s in _samples(240, seed=5, size=size)])
    real, ref = pool[:120], pool[120:]
    clean = S.noise_sharpness(real, ref)
    assert 0.8 < clean["noise"] < 1.25 and clean["sharpness"] > 0.85, clean
    g = torch.Generator().manual_seed(1)
    for corrupted in (_speckle(real, 0.02), (real + 0.08 * torch.randn(real.shape, generator=g)).clamp(-1, 1)):
        bad = S.noise_sharpness(corrupted, ref)
        assert bad["noise"] > 1.5 * clean["noise"], (bad, clean)  # speckle is noise ...
        assert bad["sharpness"] < clean["sharpness"]  # ... and never buys sharpness
        assert bad["hf_ratio"] > clean["hf_ratio"]  # (a naive HF measure is fooled)
    blurred = S.noise_sharpness(gaussian_blur(real, 5, 1.0 * size / 32), ref)
    assert blurred["sharpness"] < 0.7 * clean["sharpness"] and blurred["noise"] < clean["noise"], blurred


def test_frechet_floor_is_about_one_for_real_and_far_above_for_shifted_sets():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(8, 8, generator=g)
    real, other = torch.randn(400, 8, generator=g) @ mix, torch.randn(200, 8, generator=g) @ mix
    same = S.frechet_ratio(other, real)
    assert same["num"] == 200 and 0.5 < same["ratio"] < 2.0, same
    shifted = S.frechet_ratio(other + 1.0, real)
    assert shifted["ratio"] > 5 * same["ratio"]
    with pytest.raises(ValueError, match="two disjoint halves"):
        S.frechet_ratio(other, real[:3])


def test_frechet_in_judge_features_real_near_floor_blur_above(trained):
    judge, _ = trained
    pool = as_tensor([s.image for s in _samples(360, seed=7)])
    real = judge.frechet(pool[:120], pool[120:])
    assert 0.4 < real["ratio"] < 2.0, real
    blurred = judge.frechet(gaussian_blur(pool[:120], 5, 1.2), pool[120:])
    assert blurred["ratio"] > 2 * real["ratio"], (blurred, real)


def test_pixel_nearest_source_exact_copies_and_random_images():
    real = as_tensor([s.image for s in _samples(300, seed=9)])
    exact = S.nearest_source(real[:150], real, list(range(150)), num_candidates=100)
    assert exact == {"top1": 1.0, "chance": 0.01, "num_candidates": 100, "num": 150}
    noise = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    rand = S.nearest_source(noise, real, list(range(200)), num_candidates=100)
    assert rand["top1"] <= 0.05, rand  # chance 0.01
    small = S.nearest_source(real[:5], real[:10], [0, 1, 2, 3, 4], num_candidates=100)
    assert small["num_candidates"] == 10 and small["chance"] == 0.1
    with pytest.raises(ValueError, match="source indices"):
        S.nearest_source(real[:2], real[:10], [0, 10])


# --- scoring a folder ------------------------------------------------------------------------------


def test_score_a_folder_of_images_from_csv_labels_with_sources(trained, data, tmp_path, capsys):
    from clipkit.cli import main

    judge, record = trained
    real, _ = _real(data)
    folder = tmp_path / "generated"
    folder.mkdir()
    rows = []
    for i in range(60):  # "generated" = exact copies of real val images
        arr = real["pixels"][i].permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
        rows.append({"file": f"{i:03d}.png", "name": real["labels"]["name"][i], "source": real["keys"][i]})
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "name", "source"])
        writer.writeheader()
        writer.writerows(rows)
    report = score_folder(judge, folder, folder / "labels.csv", str(data / "val"), num_candidates=50)
    assert report["nearest_source"]["top1"] == 1.0 and report["nearest_source"]["chance"] == 0.02
    expected = judge.identify(
        as_tensor([Image.open(folder / r["file"]) for r in rows]), {"name": [r["name"] for r in rows]}
    )
    assert report["identification"] == expected
    assert report["noise"]["noise"] == pytest.approx(1.0) and report["noise"]["reference"] == "sources"
    assert report["judge"]["on_real_data"]["name"]["top1"] == pytest.approx(record["real_accuracy"]["name"]["top1"])
    lines = report_lines(report)
    assert all("judge on 120 real images" in line for line in lines if line.startswith(("identification", "Frechet")))
    code = main(
        [
            "judge",
            "score",
            "--judge",
            str(data / "run"),
            "--images",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
            "--real-data",
            str(data / "val"),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0 and "pixel nearest source: top-1 1.000" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["identification"] == report["identification"]


def test_label_files_json_and_bad_ones(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x.png": "disc", "y.png": "ring"}))
    assert read_label_file(tmp_path / "a.json", ("name",)) == (["x.png", "y.png"], {"name": ["disc", "ring"]}, None)
    (tmp_path / "b.json").write_text(json.dumps({"x.png": {"name": "disc", "source": "k1"}}))
    assert read_label_file(tmp_path / "b.json", ("name",)) == (["x.png"], {"name": ["disc"]}, ["k1"])
    (tmp_path / "c.csv").write_text("file,mood\nx.png,happy\n")
    with pytest.raises(ValueError, match="label fields"):
        read_label_file(tmp_path / "c.csv", ("name",))
    (tmp_path / "d.csv").write_text("x.png,disc\n")
    with pytest.raises(ValueError, match="header row"):
        read_label_file(tmp_path / "d.csv", ("name",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_label_file(tmp_path / "none.csv", ("name",))


def test_config_and_inputs_name_the_problem(data):
    assert default_widths(64) == (16, 32, 64, 128, 64) and default_widths(32) == (32, 64, 64, 32)
    with pytest.raises(ValueError, match="power of two"):
        default_widths(48)
    with pytest.raises(ValueError, match="classes is empty"):
        JudgeConfig()
    with pytest.raises(ValueError, match="clash"):
        JudgeConfig(classes={"blur": ("a", "b")})
    net = JudgeNet(JudgeConfig(classes={"name": ("a", "b")}))
    with pytest.raises(ValueError, match="label field 'mood'"):
        Judge(net).identify(torch.zeros(1, 3, 32, 32), {"mood": ["a"]})
    with pytest.raises(ValueError, match=r"no sample .* has the label field\(s\) \['mood'\]"):
        read_labelled(str(data / "val"), ["mood"], None)
    with pytest.raises(ValueError, match="label_field is empty"):
        JudgeTrainConfig(train_data="x", label_field=[]).validate()
