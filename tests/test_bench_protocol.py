"""benchmarks/protocol.py: contenders alternate, windows hit by other processes are marked and left out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import protocol  # noqa: E402


def test_contenders_alternate_each_round_and_ratios_pair_rounds(monkeypatch):
    # The machine is idle as far as the windows can tell: a busy CI host must not drop rounds here.
    monkeypatch.setattr(protocol, "_machine_busy_seconds", lambda: 0.0)
    order = []
    values = {"a": iter([10.0, 12.0, 11.0]), "b": iter([5.0, 4.0, 5.5])}

    def make(name):
        def run():
            order.append(name)
            return {"rate": next(values[name])}

        return run

    runs = protocol.interleave({"a": make("a"), "b": make("b")}, rounds=3, log=None)
    assert order == ["a", "b", "b", "a", "a", "b"]
    summary = runs.summary("rate")
    assert summary["a"]["median"] == 11.0 and summary["b"]["median"] == 5.0
    assert summary["a"]["spread"] == pytest.approx((12 - 10) / 11)
    ratio = runs.ratio("rate", "a", "b")
    assert ratio["rounds"] == 3
    assert ratio["median"] == pytest.approx(2.0) and ratio["max"] == pytest.approx(3.0)  # 10/5, 12/4, 11/5.5


def test_a_window_where_others_took_cpu_is_marked_and_left_out(monkeypatch):
    busy = iter(
        [
            0.0,
            0.0,  # round 1, a: nobody else ran
            0.0,
            50.0,  # round 1, b: 50 CPU-seconds of someone else's work in a short window
            50.0,
            50.0,
            50.0,
            50.0,
        ]
    )
    monkeypatch.setattr(protocol, "_machine_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(protocol, "_own_cpu_seconds", lambda: 0.0)
    runs = protocol.interleave({"a": lambda: {"x": 1.0}, "b": lambda: {"x": 100.0}}, rounds=2, log=None)
    assert [w["contender"] for w in runs.contended_windows()] == ["b"]
    assert runs.values("x", "b") == [100.0] and len(runs.runs) == 4
    assert runs.summary("x")["b"]["contended"] == 1

    busy = iter([0.0, 50.0])
    with pytest.raises(RuntimeError, match="other processes took"):
        protocol.interleave({"a": lambda: {"x": 1.0}}, rounds=1, strict=True, log=None)


def test_results_are_written_as_json_and_markdown(tmp_path):
    table = protocol.markdown_table(["side", "rate"], [["a", 1.5], ["b", 12345.0]])
    assert table.splitlines()[2] == "| a | 1.5 |" and "12,345" in table
    path = protocol.write_results("demo", {"rate": 1.5}, table, results_dir=tmp_path)
    data = json.loads(path.read_text())
    assert data["results"] == {"rate": 1.5} and data["machine"]["cores"] >= 1 and "command" in data
    assert (tmp_path / "demo.md").read_text().endswith(table)


def test_table_cells_give_the_median_its_range_and_the_clean_rounds(monkeypatch):
    busy = iter([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0])  # the 4th window (round 2, a) was hit
    monkeypatch.setattr(protocol, "_machine_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(protocol, "_own_cpu_seconds", lambda: 0.0)
    values = {"a": iter([10.0, 30.0]), "b": iter([4.0, 5.0])}
    runs = protocol.interleave(
        {"a": lambda: {"r": next(values["a"])}, "b": lambda: {"r": next(values["b"])}}, rounds=2, log=None
    )
    assert protocol.contender_rows(runs, "r") == [
        ["a", "10 (10–10)", "0.0%", "1/2"],
        ["b", "4.5 (4–5)", "22.2%", "2/2"],
    ]
    assert protocol.median_range(runs.ratio("r", "a", "b"), "x") == "2.5x (2.5–2.5x)"  # round 2 left out
    assert protocol.median_range({"rounds": 0}) == "n/a"

    busy = iter([0.0, 50.0] * 2)  # every window hit: the ratio says so, not NaN
    monkeypatch.setattr(protocol, "_machine_busy_seconds", lambda: next(busy))
    runs = protocol.interleave({"a": lambda: {"r": 6.0}, "b": lambda: {"r": 3.0}}, rounds=1, log=None)
    assert runs.ratio("r", "a", "b") == {"median": 2.0, "min": 2.0, "max": 2.0, "rounds": 1, "contended": True}
