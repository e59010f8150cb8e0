"""Embeddings on disk in clip-retrieval's inference layout: where each part lives and what it may hold.

    part_path(Path("OUT"), "img", 3)        # OUT/img_emb/img_emb_00003.npy
    require_finite(vectors, "image embeddings", keys)   # ValueError naming the NaN/inf rows

Layout (what clip-retrieval's `inference` writes, so autofaiss and embedding-reader read it):

    OUT/img_emb/img_emb_00000.npy          (n0, D) image embeddings, L2-normalised
    OUT/text_emb/text_emb_00000.npy        (n0, D) caption embeddings of the same rows (when there are captions)
    OUT/metadata/metadata_00000.parquet    n0 rows: key, path, caption (+ scalar fields of a shard's json)
    OUT/img_emb/img_emb_00001.npy ...      the next part, and so on (zero-padded: name order = row order)
    OUT/manifest.json                      written last: every part with rows, bytes, sha256; the model
                                           identity, embed dim, dtype, count, skipped samples (ours)

Row i of part p is the same sample in all three files. Rows are numbered
globally in part order (part 0 first); that number is the id an index built
from this folder returns. The writer is `writer.py` (CLI `clipkit embed`),
the streaming reader `reader.py`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODALITIES = ("img", "text")
FORMAT = "clipkit-embeddings"
FIX = "re-run the same `clipkit embed` command to finish it (it resumes), or embed into a new folder"
PART_NAME = re.compile(r"^(img_emb|text_emb|metadata)_(\d+)\.(npy|parquet)$")


def part_path(root: Path, kind: str, index: int) -> Path:
    """OUT/img_emb/img_emb_00003.npy, OUT/text_emb/..., OUT/metadata/metadata_00003.parquet."""
    if kind == "metadata":
        return root / "metadata" / f"metadata_{index:05d}.parquet"
    return root / f"{kind}_emb" / f"{kind}_emb_{index:05d}.npy"


def require_finite(vectors: np.ndarray, what: str, keys: Sequence | None = None) -> None:
    """Raise ValueError naming how many rows of `vectors` hold NaN/inf and the first one (by key when given)."""
    bad = ~np.isfinite(vectors).all(axis=tuple(range(1, vectors.ndim))) if vectors.ndim > 1 else ~np.isfinite(vectors)
    if bad.any():
        first = int(np.argmax(bad))
        name = f"row {first}" + (f" (key {keys[first]!r})" if keys is not None and first < len(keys) else "")
        raise ValueError(
            f"{what}: {int(bad.sum())} of {len(bad)} rows hold NaN or inf, the first is {name}; "
            f"non-finite vectors cannot be indexed or compared (a model with NaN weights makes them)"
        )
