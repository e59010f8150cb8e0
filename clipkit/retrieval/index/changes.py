"""An index that changes: the steps EmbeddingIndex.add / remove / merge are made of.

    index.add(vectors_or_folder, ids=None, metadata=None)   # appended_ids, appended_metadata
    index.remove([3, 17])                                   # remove_positions (flat and IVF kinds)
    EmbeddingIndex.merge([piece_a, piece_b])                # check_mergeable, merge_faiss, concatenated_rows

Kept consistent through every change: the FAISS index, the ids (never reused:
the manifest's `next_id`), the metadata rows and the manifest's count. A refused
batch (non-finite vectors, ids already present, another model's embeddings, an
embedding folder the index already holds) leaves the index as it was. These functions work on the parts (FAISS index,
ids, metadata, manifests); the EmbeddingIndex methods put them together.

Pieces are mergeable only if they come from the same trained index (the
manifest's `trained_sha256`, a hash of the empty trained index, must agree):
IVF lists of different coarse quantizers would silently mix unrelated cells.
Flat, IVF-Flat and (OPQ-)IVF-PQ merge (FAISS's merge_from); HNSW graphs cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from clipkit.retrieval.index.sources import checked_ids, checked_metadata

# ----------------------------------------------------------------------------- add


def check_same_model(manifest: dict, other: dict | None, where) -> None:
    """ValueError if `other` (a model record) names another model than the index's manifest."""
    mine = manifest.get("model") or {}
    if other and mine.get("identity") and other.get("identity") != mine["identity"]:
        raise ValueError(
            f"{where} holds embeddings of model {other.get('identity')}; this index holds model "
            f"{mine['identity']}'s. Embed with that model, or build a new index"
        )


def check_new_source(manifest: dict, record: dict | None) -> None:
    """ValueError if the embedding folder of `record` (sources.folder_record) is already in the index: the
    same modality and parts digest as a folder the manifest's "sources" lists (built from or added)."""
    if record is None:
        return
    for prior in manifest.get("sources", []):
        if prior.get("digest") == record["digest"] and prior.get("modality") == record["modality"]:
            where = "" if prior.get("path") == record["path"] else f" (as {prior.get('path')!r})"
            raise ValueError(
                f"the {record['modality']} embeddings in {record['path']!r} are already in this index"
                f"{where}: adding them again would index each of their {record['count']} items twice; "
                f"nothing was added"
            )


def appended_ids(
    old_ids: np.ndarray | None, before: int, added: int, ids, next_id: int
) -> tuple[np.ndarray | None, int]:
    """(ids of all rows, new next_id) after `added` rows joined `before` rows; ValueError for bad new ids.

    Default new ids continue after the largest id ever given (`next_id`), so the id of a
    removed vector is never reused; given ids must be new and unique.
    """
    old = old_ids if old_ids is not None else np.arange(before, dtype=np.int64)
    if ids is None:
        start = max(next_id, int(old.max()) + 1 if before else 0)
        new = np.arange(start, start + added, dtype=np.int64)
    else:
        new = np.asarray(ids, dtype=np.int64).reshape(-1)
        clash = np.isin(new, old)
        if len(new) != added or clash.any() or len(np.unique(new)) != added:
            raise ValueError(
                f"ids for add(): expected {added} new, unique ids; got {len(new)}"
                + (f", {int(clash.sum())} already in the index (e.g. {int(new[clash][0])})" if clash.any() else "")
            )
    return checked_ids(np.concatenate([old, new]), before + added), max(next_id, int(new.max()) + 1 if added else 0)


def appended_metadata(old: dict | None, before: int, new: dict | None, added: int) -> dict | None:
    """Metadata columns of all rows; a column missing on either side is filled with None."""
    if old is None and new is None:
        return None
    new = (checked_metadata(new, added) if new is not None else None) or {}
    old = old or {}
    return {c: list(old.get(c, [None] * before)) + list(new.get(c, [None] * added)) for c in {**old, **new}}


def truncate(index, n: int) -> None:
    """Drop the vectors past position n (undo an add whose ids were refused)."""
    index.remove_ids(faiss.IDSelectorRange(n, int(index.ntotal)))


# ----------------------------------------------------------------------------- remove


def remove_positions(index, kind: str, positions: np.ndarray) -> int:
    """Remove these positions from a flat or IVF FAISS index; the others keep their order, renumbered 0..n-1."""
    removed = int(index.remove_ids(faiss.IDSelectorBatch(positions.astype(np.int64))))
    if kind != "flat":
        compact_ivf_labels(index, positions)  # IVF keeps labels; renumber them 0..n-1 again
    return removed


def compact_ivf_labels(index, removed_positions: np.ndarray) -> None:
    """After IVF remove_ids: renumber the remaining labels to 0..n-1 in their old order (as a flat index does)."""
    removed = np.sort(np.asarray(removed_positions, dtype=np.int64))
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    assert invlists is not None, "an IVF index holds its inverted lists"
    for cell in range(ivf.nlist):
        size = invlists.list_size(cell)
        if size:
            labels = faiss.rev_swig_ptr(invlists.get_ids(cell), size)  # a writable view of the list's ids
            labels -= np.searchsorted(removed, labels)


def kept_metadata(metadata: dict | None, keep: np.ndarray) -> dict | None:
    if metadata is None:
        return None
    return {c: [v for v, k in zip(col, keep) if k] for c, col in metadata.items()}


# ----------------------------------------------------------------------------- merge


def check_mergeable(manifests: Sequence[dict]) -> None:
    """ValueError unless every manifest comes from one trained index and one model (and HNSW is alone)."""
    if not manifests:
        raise ValueError("merge() needs at least one piece")
    first = manifests[0]
    for i, m in enumerate(manifests[1:], 1):
        for key in ("dim", "metric", "kind", "trained_sha256"):
            if m.get(key) != first.get(key):
                raise ValueError(
                    f"piece {i} has {key}={m.get(key)!r} but piece 0 has {first.get(key)!r}; pieces "
                    f"must come from one trained index (EmbeddingIndex.trained(...).empty_copy())"
                )
        if (m.get("model") or {}).get("identity") != (first.get("model") or {}).get("identity"):
            raise ValueError(
                f"piece {i} holds embeddings of model {(m.get('model') or {}).get('identity')}, piece 0 "
                f"of {(first.get('model') or {}).get('identity')}; refusing to mix models"
            )
    if first["kind"] == "hnsw" and len(manifests) > 1:
        raise ValueError(
            "HNSW indexes cannot be merged (FAISS has no merge for graphs); build pieces of kind "
            "'flat', 'ivf' or 'ivfpq'"
        )


def merge_faiss(indexes: Sequence, kind: str):
    """One FAISS index holding every piece's vectors in order (labels shifted: piece j's follow piece j-1's).

    The pieces are emptied (FAISS moves their inverted lists into the result).
    """
    index = faiss.clone_index(indexes[0])
    if len(indexes) == 1:
        return index
    target = faiss.extract_index_ivf(index) if kind != "flat" else index
    for piece in indexes[1:]:
        source = faiss.extract_index_ivf(piece) if kind != "flat" else piece
        target.merge_from(source, 0 if kind == "flat" else target.ntotal)  # flat appends in order
    index.ntotal = target.ntotal  # the OPQ wrapper keeps its own count
    return index


def merge_on_disk(trained, piece_files: Sequence, ivfdata):
    """faiss.contrib.ondisk.merge_ondisk: a copy of the empty `trained` FAISS index whose inverted lists are the
    pieces' (saved FAISS files, added with global labels), in the file `ivfdata`."""
    index = faiss.clone_index(trained)
    index.reset()
    merge_ondisk(index, [str(f) for f in piece_files], str(ivfdata), shift_ids=False)  # pieces hold global labels
    return index


def concatenated_rows(
    ids: Sequence[np.ndarray | None], metadata: Sequence[dict | None], sizes: Sequence[int]
) -> tuple[np.ndarray | None, dict | None]:
    """(ids, metadata) of pieces put one after another; a piece without ids numbers its rows from its offset."""
    offsets = np.cumsum([0, *sizes[:-1]])
    total = int(sum(sizes))
    all_ids = checked_ids(
        np.concatenate(
            [i if i is not None else np.arange(n, dtype=np.int64) + off for i, n, off in zip(ids, sizes, offsets)]
        ),
        total,
    )
    if all(m is None for m in metadata):
        return all_ids, None
    columns = {c for m in metadata if m for c in m}
    merged = {c: [v for m, n in zip(metadata, sizes) for v in ((m or {}).get(c) or [None] * n)] for c in columns}
    return all_ids, checked_metadata(merged, total)
