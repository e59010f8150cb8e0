"""`clipkit fit`: shards -> CLIP -> prior -> decoder (-> upsampler) -> index and report, resumable by stage."""

from __future__ import annotations

import argparse
import json

import pytest

from clipkit.cli import main
from clipkit.cli.types import duration
from clipkit.train import fit as fit_module
from clipkit.train.fit import STAGE_SHARES, Budget, FitConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("text, seconds", [("45m", 2700), ("1h30m", 5400), ("90s", 90), ("2700", 2700), ("1.5h", 5400)])
def test_durations_read_as_people_write_them(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "0m", "-5m", "5x"])
def test_a_bad_duration_is_refused_naming_it(text):
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        duration(text)


def test_the_budget_is_shared_by_the_stages_still_to_run(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(fit_module.time, "monotonic", lambda: now[0])
    budget = Budget(1000.0, ["clip", "prior", "decoder", "upsampler"])
    assert budget.seconds("clip") == pytest.approx(1000 * STAGE_SHARES["clip"])
    now[0] = 100.0  # the CLIP ended early: the others share the 900 s left
    left = {s: STAGE_SHARES[s] for s in ("prior", "decoder", "upsampler")}
    assert budget.seconds("prior") == pytest.approx(900 * left["prior"] / sum(left.values()))
    assert Budget(None, ["clip"]).seconds("clip") is None
    # A resumed run whose CLIP is done gives the whole budget to the stages still to train.
    assert Budget(1000.0, ["decoder"]).seconds("decoder") == pytest.approx(1000.0)


def test_after_the_clip_the_decoder_trains_beside_the_prior_then_the_upsampler(tmp_path, monkeypatch):
    now, lanes = [0.0], []
    monkeypatch.setattr(fit_module.time, "monotonic", lambda: now[0])

    def clip_stage(config, out, budget):
        assert budget.seconds("clip") == pytest.approx(1000 * STAGE_SHARES["clip"])
        now[0] = 250.0  # the CLIP took 250 s: 750 s are left for both lanes, each its own
        return {"model": "clip-dir", "steps": 1, "train_seconds": 250.0}

    def side_by_side(calls):
        lanes.extend((args[2], args[4], args[5]) for _, args in calls)  # stages, seconds, threads
        return [{stage: {"steps": 2} for stage in args[2]} for _, args in calls]

    monkeypatch.setattr(fit_module, "_clip_stage", clip_stage)
    monkeypatch.setattr(fit_module, "side_by_side", side_by_side)
    monkeypatch.setattr(fit_module, "claim_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(fit_module.clipkit, "load", lambda *a, **k: None)
    monkeypatch.setattr(fit_module, "_index_stage", lambda *a: {"index": "idx"})
    monkeypatch.setattr(fit_module, "report", lambda *a: tmp_path / "report.html")
    monkeypatch.setattr(fit_module.os, "cpu_count", lambda: 2)
    summary = fit(FitConfig(train_data="shards", out=str(tmp_path / "fit"), image_size=64, time_budget=1000))
    assert lanes == [(["decoder"], 750.0, 1), (["prior", "upsampler"], 750.0, 1)]
    assert list(summary["stages"]) == ["clip", "prior", "decoder", "upsampler"]
    # Inside a lane its stages share its time in proportion to their shares.
    prior, upsampler = STAGE_SHARES["prior"], STAGE_SHARES["upsampler"]
    assert Budget(750.0, ["prior", "upsampler"]).seconds("prior") == pytest.approx(750 * prior / (prior + upsampler))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"image_size": 48}, "image_size"),
        ({"time_budget": 0}, "time_budget"),
        ({"pretrained": "x.safetensors"}, "pretrained"),
    ],
)
def test_bad_settings_are_one_line(bad, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        fit(FitConfig(train_data="x", out=str(tmp_path / "o"), **bad))


def test_fit_trains_every_stage_then_a_rerun_only_reports(shapes_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    argv = [
        "fit",
        "--train-data",
        str(shapes_dir / "train"),
        "--val-data",
        str(shapes_dir / "val"),
        "--unseen-data",
        str(shapes_dir / "holdout"),
        "--out",
        str(out),
        "--model",
        "shapes-tiny",
        "--max-steps",
        "2",
        "--num-samples",
        "400",
        "--report-images",
        "8",
        "--sample-steps",
        "4",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["clip", "prior", "decoder"]  # 32 px: no upsampler
    assert all(s["steps"] == 2 for s in summary["stages"].values())
    assert {p.name for p in (out / "pipeline").iterdir()} >= {"unclip.json", "prior", "decoder"}
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["pixel_chance"] == pytest.approx(1 / 8)
    assert 0 <= metrics["pixel_nearest_source_top1"] <= 1 and metrics["inversion_noise"] > 0
    page = (out / "report.html").read_text()
    for figure in ("report/inversion.png", "report/text_to_image.png", "report/unseen.png"):
        assert figure in page and (out / figure).is_file()
    unseen = page.split("Captions never trained on: ", 1)[1].split("<", 1)[0].split("; ")
    assert len(unseen) == len(set(unseen)) >= 2  # distinct captions, not the renders of the first few
    assert f"clipkit serve --index {out / 'index' / 'index'}" in printed
    assert json.loads((out / "index" / "done.json").read_text())["summary"].startswith("200 images")

    # The same command again: every stage is done, nothing trains, the report is redrawn.
    before = {s: (out / s / "done.json").stat().st_mtime_ns for s in ("clip", "prior", "decoder", "index")}
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("skipped (done)") == 4
    assert {s: (out / s / "done.json").stat().st_mtime_ns for s in before} == before

    # A run killed after the index stage wrote its embeddings but before its marker: the stage is redone over
    # its own earlier output (ours by manifest), with no --overwrite.
    (out / "index" / "done.json").unlink()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("skipped (done)") == 3
    assert json.loads((out / "index" / "done.json").read_text())["summary"].startswith("200 images")


def test_fit_refuses_a_user_folder(shapes_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["fit", "--train-data", str(shapes_dir / "train"), "--out", str(mine), "--max-steps", "1"]) == 2
    assert "notes.txt" in str(list(mine.iterdir())) and (mine / "notes.txt").read_text() == "keep me"
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_fit_at_64px_adds_the_upsampler_and_starts_from_a_given_clip(tiny_model_dir, tmp_path):
    from clipkit.shapes.world import write_split

    data = tmp_path / "data64"
    write_split(data, split="train", num=320, seed=0, shard_size=320, image_size=64)
    out = tmp_path / "fit64"
    summary = fit(
        FitConfig(
            train_data=str(data),
            out=str(out),
            image_size=64,
            clip=str(tiny_model_dir),
            max_steps=2,
            num_samples=300,
            report_images=4,
            steps=3,
        )
    )
    assert list(summary["stages"]) == ["clip-import", "prior", "decoder", "upsampler"]
    assert summary["stages"]["clip-import"]["model"] == str(tiny_model_dir.resolve())
    assert (out / "pipeline" / "upsampler").is_dir()
    from PIL import Image

    assert Image.open(out / "report" / "inversion.png").size[0] > 8 * 64  # 64 px pairs in the grid


def test_the_report_judges_each_image_against_its_own_label():
    """_judged: the judge's identify() on the sample JSON's label field; labels it never saw are left out."""
    import torch

    from clipkit.evaluation.judge import Judge, JudgeConfig, JudgeNet
    from clipkit.train.fit import _judged

    torch.manual_seed(0)
    judge = Judge(JudgeNet(JudgeConfig(classes={"name": ["cat", "dog", "owl"]}, corruptions=False)))
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    metas = [{"name": "cat"}, {"name": "dog"}, {"name": "unseen thing"}, {}, {"name": "owl"}]
    row = _judged(judge, images, metas, "name", "text_")
    predicted = judge.predict(images)["name"]
    truth = {0: 0, 1: 1, 4: 2}
    assert row["text_judge_num"] == 3 and row["text_judge_chance"] == pytest.approx(1 / 3)
    assert row["text_judge_top1"] == pytest.approx(sum(int(predicted[i]) == c for i, c in truth.items()) / 3)
    assert _judged(judge, images, metas, None, "x_")["x_judge_num"] == 3  # the judge's first field
