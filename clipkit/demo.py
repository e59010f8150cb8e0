"""The demo: every stage of the shapes loop, resumable, ending in a summary.

Each stage writes into its own sub-folder of the output directory and a
`done.json` marker last; a stage whose marker exists is skipped on re-runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipkit.io import write_json


@dataclass(frozen=True)
class DemoSettings:
    train_samples: int
    val_samples: int
    holdout_samples: int
    hat_pairs: int          # images (pairs x 2)
    shard_size: int

    @classmethod
    def for_mode(cls, quick: bool) -> "DemoSettings":
        if quick:
            return cls(train_samples=2_000, val_samples=500, holdout_samples=250, hat_pairs=200, shard_size=1_000)
        return cls(train_samples=20_000, val_samples=2_000, holdout_samples=1_000, hat_pairs=400, shard_size=5_000)


def stage_data(out: Path, s: DemoSettings) -> dict:
    from clipkit.data.shapes import write_split

    counts = {}
    for split, num, seed in (("train", s.train_samples, 0), ("val", s.val_samples, 1),
                             ("holdout", s.holdout_samples, 2), ("hat_pairs", s.hat_pairs, 3)):
        stats = write_split(out / split, split=split, num=num, seed=seed, shard_size=s.shard_size, progress=True)
        counts[split] = stats["count"]
    return {"summary": ", ".join(f"{k} {v}" for k, v in counts.items()), "counts": counts}


def stage_embed_stats(out: Path, s: DemoSettings, data_dir: Path) -> dict:
    import clipkit
    from clipkit.data.shards import expand_urls, shard_pipeline

    model = clipkit.create("shapes-small", seed=0)
    urls = sorted(str(p) for p in (data_dir / "val").glob("*.tar"))
    pipeline, skipped = shard_pipeline(expand_urls(urls), model.preprocess, None, batch_size=256,
                                       fields=("image", "text"))
    images, texts = next(iter(pipeline))
    img = model.encode_images(images)
    txt = model.encode_texts(list(texts))
    diag = float((img * txt).sum(-1).mean())
    off = float((img @ txt.T).mean())
    return {"summary": f"fresh shapes-small: {tuple(img.shape)} image and {tuple(txt.shape)} text embeddings, "
                       f"matched-pair cosine {diag:.3f} vs all-pairs {off:.3f} (untrained: no alignment yet)",
            "matched_cosine": diag, "all_pairs_cosine": off}


def _run_stage(name: str, folder: Path, fn: Callable[[], dict], force: bool) -> dict:
    marker = folder / "done.json"
    if marker.is_file() and not force:
        result = json.loads(marker.read_text())
        print(f"[{name}] skipped (done): {result.get('summary', '')}")
        return result
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    result = fn()
    result["seconds"] = round(time.time() - start, 1)
    write_json(marker, result)
    print(f"[{name}] {result.get('summary', '')} ({result['seconds']} s)")
    return result


def run_demo(out: str | Path, quick: bool = False, force: bool = False) -> dict:
    out = Path(out)
    settings = DemoSettings.for_mode(quick)
    start = time.time()
    results = {}
    data_dir = out / "data"
    results["data"] = _run_stage("data", data_dir, lambda: stage_data(data_dir, settings), force)
    results["embed_stats"] = _run_stage("embed-stats", out / "embed_stats",
                                        lambda: stage_embed_stats(out, settings, data_dir), force)
    total = time.time() - start
    print(f"demo finished in {total:.0f} s; outputs in {out}")
    write_json(out / "summary.json", {"seconds": round(total, 1), "quick": quick, "stages": results})
    return results
