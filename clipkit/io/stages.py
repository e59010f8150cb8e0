"""Multi-stage runs that resume by stage: each stage writes its folder, then a `done.json` marker last.

    result = run_stage("clip", out / "clip", lambda: train_the_clip(out / "clip"), force=False)

A stage whose marker exists is skipped and its recorded result returned, so running the same command
again after a kill (or after adding a stage) redoes only what did not finish. The marker is written
atomically after the stage returns: a stage killed half-way has no marker and runs again (its own
training resumes from its checkpoints). Used by `clipkit demo` and `clipkit fit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from clipkit.io.errors import DamagedFileError
from clipkit.io.files import read_json, write_json

MARKER = "done.json"


def run_stage(name: str, folder: Path, fn: Callable[[], dict], force: bool = False) -> dict:
    """Run `fn` (returning a JSON-able dict with an optional "summary" line) unless `folder` holds its marker;
    prints one line when it starts and one when it ends (or is skipped). force: run even if done."""
    marker = Path(folder) / MARKER
    if marker.is_file() and not force:
        result = read_json(marker, "stage marker")
        if not isinstance(result, dict):
            raise DamagedFileError(
                f"stage marker {str(marker)!r} holds {type(result).__name__}, not a stage "
                f"record; it is damaged: remove it to run the {name} stage again"
            )
        print(f"[{name}] skipped (done): {result.get('summary', '')}", flush=True)
        return result
    Path(folder).mkdir(parents=True, exist_ok=True)
    print(f"[{name}] running ...", flush=True)
    start = time.time()
    result = fn()
    result["seconds"] = round(time.time() - start, 1)
    write_json(marker, result)
    print(f"[{name}] {result.get('summary', '')} ({result['seconds']} s)", flush=True)
    return result
