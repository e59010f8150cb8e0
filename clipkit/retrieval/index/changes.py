"""An index that changes: add vectors (same model, new ids) and remove them (flat / IVF kinds).

    index.add(vectors_or_folder, ids=None, metadata=None)   # EmbeddingIndex.add calls add(index, ...)
    index.remove([3, 17])

Kept consistent through every change: the FAISS index, the ids (never reused:
the manifest's `next_id`), the metadata rows and the manifest's count. A refused
batch (non-finite vectors, ids already present, another model's embeddings) leaves
the index as it was.
"""

from __future__ import annotations

import os
import time

import numpy as np

from clipkit.index_sources import Source as _Source
from clipkit.index_sources import checked_ids as _checked_ids, checked_metadata as _checked_metadata
from clipkit.index_sources import model_info as _model_info


def add(index, vectors, ids=None, metadata: dict | None = None, *, model=None, modality: str | None = None,
        batch_size: int = 65536) -> int:
    """Add vectors (an array, an EmbeddingFolder or its path, or chunks) to a trained EmbeddingIndex; returns how many.

    ids default to the next numbers after the largest id; custom ids must be new. A
    folder brings its metadata; embeddings of another model than the index's are
    refused (the folder's manifest, or `model`, says which model made them). The
    search parameter tuned at build time is kept (re-tune after large additions).
    """
    from clipkit.embeddings import EmbeddingFolder

    _check_in_memory(index, "add to")
    if isinstance(vectors, (str, os.PathLike)):
        vectors = EmbeddingFolder(vectors)
    info = vectors.info if isinstance(vectors, EmbeddingFolder) else {}
    _check_same_model(index, _model_info(model, info, index.dim), getattr(vectors, "root", "the vectors"))
    src = _Source(vectors, batch_size, 1, None, modality)
    if src.dim != index.dim:
        raise ValueError(f"vectors have dim {src.dim}; this index holds dim-{index.dim} vectors")
    before = len(index)
    chunks = list(src.chunks()) if src.n is None else None      # iterators: check all before adding any
    for chunk in (chunks if chunks is not None else src.chunks()):
        index.index.add(chunk)
    added = len(index) - before
    old_ids = index.ids if index.ids is not None else np.arange(before, dtype=np.int64)
    if ids is None:                                   # never reuse the id of a removed vector
        start = max(int(index.manifest.get("next_id", 0)), int(old_ids.max()) + 1 if before else 0)
        new_ids = np.arange(start, start + added, dtype=np.int64)
    else:
        new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        clash = np.isin(new_ids, old_ids)
        if len(new_ids) != added or clash.any() or len(np.unique(new_ids)) != added:
            _truncate(index, before)
            raise ValueError(f"ids for add(): expected {added} new, unique ids; got {len(new_ids)}"
                             + (f", {int(clash.sum())} already in the index (e.g. {int(new_ids[clash][0])})"
                                if clash.any() else ""))
    index.ids = _checked_ids(np.concatenate([old_ids, new_ids]), before + added)
    index.manifest["next_id"] = max(int(index.manifest.get("next_id", 0)), int(new_ids.max()) + 1 if added else 0)
    meta = metadata if metadata is not None else src.metadata
    if index.metadata is not None or meta is not None:
        meta = _checked_metadata(meta, added) if meta is not None else {}
        old = index.metadata or {}
        index.metadata = {c: list(old.get(c, [None] * before)) + list(meta.get(c, [None] * added))
                         for c in {**old, **meta}}
    index._positions = None
    index.manifest["count"] = len(index)
    index.manifest.setdefault("added", []).append({"count": added, "time": round(time.time(), 1)})
    return added


def _truncate(index, n: int) -> None:
    """Undo an add() whose ids were refused (vectors past position n)."""
    import faiss

    index.index.remove_ids(faiss.IDSelectorRange(n, int(index.index.ntotal)))

def _check_in_memory(index, what: str) -> None:
    if index.ivfdata is not None:
        raise ValueError(f"cannot {what} an index whose inverted lists are on disk ({index.ivfdata}); build it "
                         f"again with the new vectors (`clipkit index build --pieces N --on-disk`)")

def _check_same_model(index, other: dict | None, where) -> None:
    mine = index.manifest.get("model") or {}
    if other and mine.get("identity") and other.get("identity") != mine["identity"]:
        raise ValueError(f"{where} holds embeddings of model {other.get('identity')}; this index holds model "
                         f"{mine['identity']}'s. Embed with that model, or build a new index")


def remove(index, ids) -> int:
    """Remove the vectors with these ids (flat and IVF kinds); returns how many were found and removed."""
    import faiss

    from clipkit.index_pieces import compact_ivf_labels

    _check_in_memory(index, "remove from")
    if index.kind == "hnsw":
        raise ValueError("an HNSW index cannot delete vectors (FAISS graphs do not support removal); rebuild "
                         "it without them, or build kind='flat' / 'ivf' / 'ivfpq' if you need remove()")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    all_ids = index.ids if index.ids is not None else np.arange(len(index), dtype=np.int64)
    positions = np.flatnonzero(np.isin(all_ids, ids))
    if not len(positions):
        return 0
    index.manifest["next_id"] = max(int(index.manifest.get("next_id", 0)), int(all_ids.max()) + 1)
    removed = int(index.index.remove_ids(faiss.IDSelectorBatch(positions.astype(np.int64))))
    if index.kind != "flat":
        compact_ivf_labels(index.index, positions)        # IVF keeps labels; renumber them 0..n-1 again
    keep = np.ones(len(all_ids), dtype=bool)
    keep[positions] = False
    index.ids = all_ids[keep]                              # ids are no longer positions
    if index.metadata is not None:
        index.metadata = {c: [v for v, k in zip(col, keep) if k] for c, col in index.metadata.items()}
    index._positions = None
    index.manifest["count"] = len(index)
    return removed
