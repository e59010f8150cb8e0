"""The HTML report: figures and tables are rendered, and every image loads in a real browser."""

from __future__ import annotations

import pytest
from PIL import Image

from clipkit.io.report import Figure, Section, write_report

from browser import chromium_binary, image_load_report


def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path)


def test_report_refuses_missing_figures(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        write_report(tmp_path / "report.html", "t", [Section("s", "text", [Figure("nope.png", "missing")])])


def test_report_lists_sections_metrics_and_tables(tmp_path):
    _png(tmp_path / "a" / "one.png", "red")
    page = write_report(
        tmp_path / "report.html",
        "Demo <report>",
        [
            Section(
                "Training",
                "The model <b>learns</b>.",
                [Figure("a/one.png", "red square")],
                metrics={"accuracy": 0.98765},
            ),
            Section("Table", "rows", table=[{"k": 1, "recall": 0.5}, {"k": 10, "recall": 0.9}]),
        ],
        summary="all good",
    )
    text = page.read_text()
    assert "<title>Demo &lt;report&gt;</title>" in text
    assert "<img src='a/one.png'" in text and "red square" in text
    assert "0.9877" in text and "<td>10</td>" in text and "all good" in text


@pytest.mark.skipif(chromium_binary() is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_every_image_loads_in_headless_chromium(tmp_path):
    _png(tmp_path / "a" / "one.png", "red")
    _png(tmp_path / "b" / "two.png", "blue")
    page = write_report(
        tmp_path / "report.html", "t", [Section("s", "x", [Figure("a/one.png", "one"), Figure("b/two.png", "two")])]
    )
    report = image_load_report(page)
    assert [r["src"] for r in report] == ["a/one.png", "b/two.png"]
    assert all(r["ok"] for r in report)
    # The probe really detects a broken image.
    (tmp_path / "b" / "two.png").unlink()
    broken = image_load_report(page)
    assert [r["ok"] for r in broken] == [True, False]
