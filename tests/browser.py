"""Headless Chromium for report tests: did every image on a page load?

We append a tiny script to a copy of the page that, once the page has loaded,
writes each image's state into the DOM; `--dump-dom` then prints the DOM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_PROBE = """<script>
window.addEventListener('load', () => {
  const report = Array.from(document.images).map(img => ({src: img.getAttribute('src'),
      ok: img.complete && img.naturalWidth > 0}));
  const out = document.createElement('pre');
  out.id = 'image-probe';
  out.textContent = 'IMAGES:' + JSON.stringify(report) + ':END';
  document.body.appendChild(out);
});
</script>"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    "--virtual-time-budget=5000",
]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def image_load_report(page: Path) -> list[dict]:
    """[{src, ok}] for every <img> of `page`, as Chromium loaded it."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian package 'chromium')")
    probe_page = page.parent / f".probe-{page.name}"
    probe_page.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe_page.resolve().as_uri()],
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        probe_page.unlink()
    match = re.search(r"id=\"image-probe\">IMAGES:(.*?):END", result.stdout, re.S)
    if not match:
        raise RuntimeError(f"chromium printed no probe result (rc={result.returncode}): {result.stderr[-2000:]}")
    return json.loads(match.group(1).replace("&quot;", '"'))
