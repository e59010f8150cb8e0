"""End to end: `clipkit demo --quick` runs the whole chain, resumes, and leaves a report whose images load."""

from __future__ import annotations

import json

import pytest

from clipkit.cli import main as cli_main

from browser import chromium_binary, image_load_report


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli_main(["demo", "--out", str(out), "--quick"]) == 0
    return out, None


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_learns(quick_demo):
    out, _ = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert list(stages) == ["data", "clip", "zeroshot", "retrieval", "hat_vector", "unclip", "spiral"]
    # Learned behaviour even at tiny scale: well above chance where chance is 1/8 (colour) or 1/2 (hat).
    val = next(row for row in stages["zeroshot"]["table"] if row["split"] == "val")
    assert val["color"] > 0.3 and val["hat"] > 0.75
    assert (
        stages["spiral"]["metrics"]["samplers"]["ddpm_1000_no_noise"]["coverage"]
        < stages["spiral"]["metrics"]["samplers"]["ddpm_1000"]["coverage"] - 0.5
    )
    for stage in stages:
        assert (out / stage / "done.json").is_file()
    assert (out / "clip" / "model" / "model.safetensors").is_file()
    assert (out / "unclip" / "pipeline" / "unclip.json").is_file()


@pytest.mark.slow
def test_quick_demo_rerun_skips_finished_stages(quick_demo, capsys):
    out, _ = quick_demo
    outputs = {
        p: p.stat().st_mtime_ns
        for p in (out / "clip" / "model", out / "unclip" / "pipeline" / "decoder", out / "retrieval" / "index")
    }
    capsys.readouterr()
    assert cli_main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped (done)") == 7 and "running" not in printed
    assert {p: p.stat().st_mtime_ns for p in outputs} == outputs  # nothing was redone


@pytest.mark.slow
@pytest.mark.skipif(chromium_binary() is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_quick_demo_report_images_all_load(quick_demo):
    out, _ = quick_demo
    report = image_load_report(out / "report.html")
    assert len(report) >= 20
    broken = [r["src"] for r in report if not r["ok"]]
    assert not broken, f"images that did not load: {broken}"
