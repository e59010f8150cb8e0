"""benchmarks/bench_fit.py: a finished fit folder becomes stage cells and target rows, each marked met or missed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_fit  # noqa: E402


def fit_folder(tmp_path: Path, metrics: dict) -> Path:
    folder = tmp_path / "fit"
    folder.mkdir()
    stages = {
        "clip": {
            "summary": "1900 steps in 810 s (stopped by time_budget); val/t2i_r1 0.501",
            "steps": 1900,
            "train_seconds": 810.2,
            "eval": {"val/t2i_r1": 0.5012, "val/t2i_r5": 0.8},
        },
        "decoder": {"summary": "3000 steps in 900 s (stopped by steps)", "steps": 3000, "train_seconds": 900.0},
    }
    (folder / "summary.json").write_text(json.dumps({"stages": stages, "index": {"seconds": 3.6}}))
    (folder / "report.json").write_text(json.dumps({"metrics": metrics}))
    return folder


def test_rows_mark_each_target_by_its_direction_and_say_what_was_not_measured(tmp_path):
    metrics = {
        "inversion_judge_top1": 0.61,  # >= 0.6: met
        "pixel_nearest_source_top1": 0.59,  # missed
        "inversion_frechet_ratio": 3.5,  # <= 3: missed
        "inversion_noise": 1.1,  # <= 1.2: met
        "real_judge_top1": 0.63,
    }
    cells, rows = bench_fit.columns(*bench_fit.read_fit(fit_folder(tmp_path, metrics)))
    assert cells == {
        "clip": "1,900 steps, 810 s (time_budget)",
        "decoder": "3,000 steps, 900 s (steps)",
        "index": "4 s",
    }
    by = {r[0]: r[1:] for r in rows}
    assert by["CLIP t2i_r1 (validation split)"] == ["0.501", "", ""]
    assert by["inversion: judge identification top-1"] == ["0.610", ">= 0.6", "ok"]
    assert by["inversion: pixel nearest-source top-1"] == ["0.590", ">= 0.6", "MISSED"]
    assert by["inversion: Frechet / real floor"] == ["3.500", "<= 3", "MISSED"]
    assert by["inversion: noise / real"] == ["1.100", "<= 1.2", "ok"]
    assert by["text -> image (held-out captions): judge top-1"] == ["not measured", ">= 0.4", ""]
    assert by["the judge on the same real images: top-1"] == ["0.63", "", ""]


def test_a_folder_without_its_report_is_refused_by_name(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fit.py"), "--from", str(folder)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "report.json" in out.stderr and "clipkit fit" in out.stderr
