"""benchmarks/bench_gpu.py: without a GPU it says so and exits 0; its dry run fills every row of its one
table on the CPU; a section that fails reports its error in its row and the others still run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_gpu  # noqa: E402

ROWS = [
    ("CLIP training", "clipkit"),
    ("CLIP training", "open_clip_train"),
    ("CLIP training", "ratio clipkit / open_clip_train"),
    ("unCLIP decoder training", "steps/s"),
    ("unCLIP prior training", "steps/s"),
    ("embedding", "encode_images fp32"),
    ("embedding", "encode_images bf16"),
    ("embedding", "ratio bf16 / fp32"),
    ("serve", "p50, one kept-alive connection"),
    ("serve", "p99, one kept-alive connection"),
    ("serve", "p50, a new connection a request"),
]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_gpu.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=BENCHMARKS.parent,
    )


def test_without_a_gpu_it_says_so_exits_0_and_writes_nothing(tmp_path):
    done = _run("--results-dir", str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "no CUDA GPU here; bench_gpu.py measures nothing on CPU"
    assert list(tmp_path.iterdir()) == []


def test_a_failing_section_reports_its_error_in_its_row_and_the_others_run(monkeypatch, capsys):
    def broken(size, work, rounds):
        raise RuntimeError("open_clip_train failed (rc 1):\nTraceback ...\nValueError: no shards | here")

    def fine(size, work, rounds):
        assert work.name == "embed" and rounds == 3
        return [["embedding", "encode_images fp32", 12.5, "images/s", "ok"]]

    monkeypatch.setattr(bench_gpu, "SECTION_FUNCTIONS", {"clip": broken, "embed": fine})
    rows = bench_gpu.run_sections(bench_gpu.DRY, ["clip", "embed"], rounds=3)
    assert rows == [
        [
            "CLIP training",
            "error",
            "error",
            "",
            "RuntimeError: open_clip_train failed (rc 1): ... ValueError: no shards / here",
        ],
        ["embedding", "encode_images fp32", 12.5, "images/s", "ok"],
    ]
    assert "Traceback" in capsys.readouterr().err  # the whole error is on stderr


@pytest.mark.slow
def test_dry_run_fills_every_row_with_consistent_numbers(tmp_path):
    done = _run("--dry-run", "--results-dir", str(tmp_path), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    rows = data["results"]["rows"]
    assert [(r["section"].split(":")[0], r["measure"]) for r in rows] == ROWS, [r["how"] for r in rows]
    values = {m: r["value"] for (_, m), r in zip(ROWS, rows)}
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values.values()), values
    # one round: each ratio is that round's two numbers divided
    assert values["ratio clipkit / open_clip_train"] == pytest.approx(values["clipkit"] / values["open_clip_train"])
    assert values["ratio bf16 / fp32"] == pytest.approx(values["encode_images bf16"] / values["encode_images fp32"])
    assert values["p50, one kept-alive connection"] <= values["p99, one kept-alive connection"]
    table = (tmp_path / "gpu-dry-run.md").read_text().split("\n", 1)[1]  # after the provenance comment
    assert table in done.stdout and table.count("\n| ") == len(ROWS) + 1
    assert data["results"]["dry_run"] is True and "dry run" in table
