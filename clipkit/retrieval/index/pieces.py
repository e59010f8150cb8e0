"""Building an index in pieces from one trained index, and merging the pieces (FAISS's own merge_from).

    trained = EmbeddingIndex.trained(sample, kind="ivf", count=10**8)    # coarse quantizer (+ codes) once
    piece = trained.empty_copy(); piece.add(vectors_of_rank_r)           # each rank / batch of parts
    index = EmbeddingIndex.merge([piece_0, piece_1, ...])                # ids / metadata concatenated in order
    index = build_in_pieces("emb/", pieces=4, kind="ivf")                # all of it, tuned like build()

Pieces are mergeable only if they come from the same trained index (the
manifest's `trained_sha256`, a hash of the empty trained index, must agree):
IVF lists of different coarse quantizers would silently mix unrelated cells.
Flat, IVF-Flat and (OPQ-)IVF-PQ merge; HNSW graphs cannot (FAISS has no
merge for them), so a piece build refuses kind='hnsw'.

Why pieces: each piece needs only its own vectors in memory while it is
filled, pieces can be filled by different processes (one per rank, from the
rank's parts of an embedding folder), and the one expensive step, training,
happens once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np


def compact_ivf_labels(index, removed_positions: np.ndarray) -> None:
    """After IVF remove_ids: renumber the remaining labels to 0..n-1 in their old order (as a flat index does)."""
    import faiss

    removed = np.sort(np.asarray(removed_positions, dtype=np.int64))
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    for cell in range(ivf.nlist):
        size = invlists.list_size(cell)
        if size:
            labels = faiss.rev_swig_ptr(invlists.get_ids(cell), size)   # a writable view of the list's ids
            labels -= np.searchsorted(removed, labels)


def merge(pieces: Sequence, *, model=None):
    """One EmbeddingIndex holding every piece's vectors, ids and metadata, in order (see module docstring).

    The pieces are emptied (FAISS moves their inverted lists into the result).
    """
    import faiss

    from clipkit.index import EmbeddingIndex

    pieces = list(pieces)
    if not pieces:
        raise ValueError("merge() needs at least one piece")
    first = pieces[0].manifest
    for i, p in enumerate(pieces[1:], 1):
        m = p.manifest
        for key in ("dim", "metric", "kind", "trained_sha256"):
            if m.get(key) != first.get(key):
                raise ValueError(f"piece {i} has {key}={m.get(key)!r} but piece 0 has {first.get(key)!r}; pieces "
                                 f"must come from one trained index (EmbeddingIndex.trained(...).empty_copy())")
        if (m.get("model") or {}).get("identity") != (first.get("model") or {}).get("identity"):
            raise ValueError(f"piece {i} holds embeddings of model {(m.get('model') or {}).get('identity')}, piece 0 "
                             f"of {(first.get('model') or {}).get('identity')}; refusing to mix models")
    if first["kind"] == "hnsw" and len(pieces) > 1:
        raise ValueError("HNSW indexes cannot be merged (FAISS has no merge for graphs); build pieces of kind "
                         "'flat', 'ivf' or 'ivfpq'")
    sizes = [len(p) for p in pieces]                     # before merging: merge_from empties its source
    index = faiss.clone_index(pieces[0].index)
    target = faiss.extract_index_ivf(index) if first["kind"] != "flat" else index
    for p in pieces[1:]:
        source = faiss.extract_index_ivf(p.index) if first["kind"] != "flat" else p.index
        target.merge_from(source, 0 if first["kind"] == "flat" else target.ntotal)   # flat appends in order
    index.ntotal = target.ntotal                          # the OPQ wrapper keeps its own count
    ids = np.concatenate([p.ids if p.ids is not None else np.arange(n, dtype=np.int64) + off
                          for p, n, off in zip(pieces, sizes, np.cumsum([0] + sizes[:-1]))])
    from clipkit.index_sources import checked_ids as _checked_ids, checked_metadata as _checked_metadata

    ids = _checked_ids(ids, int(index.ntotal))
    metadata = None
    if any(p.metadata is not None for p in pieces):
        columns = {c for p in pieces if p.metadata for c in p.metadata}
        metadata = {c: [v for p, n in zip(pieces, sizes) for v in ((p.metadata or {}).get(c) or [None] * n)]
                    for c in columns}
        metadata = _checked_metadata(metadata, int(index.ntotal))
    manifest = {**first, "params": dict(first["params"]), "count": int(index.ntotal), "pieces": len(pieces)}
    return EmbeddingIndex(index, manifest, ids, metadata)


def merge_on_disk(trained, piece_files: Sequence, ivfdata) -> object:
    """faiss.contrib.ondisk.merge_ondisk: a copy of the empty `trained` EmbeddingIndex's FAISS index whose
    inverted lists are the pieces' (saved FAISS files, added with global labels), in the file `ivfdata`."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.clone_index(trained.index)
    index.reset()
    merge_ondisk(index, [str(f) for f in piece_files], str(ivfdata), shift_ids=False)   # pieces hold global labels
    return index


def build_in_pieces(vectors, pieces: int = 2, kind: str = "auto", metric: str = "ip", *, model=None,
                    recall_target: float = 0.95, k: int = 10, num_queries: int = 500, max_memory: int | None = None,
                    count: int | None = None, batch_size: int = 65536, train_size: int | None = None,
                    seed: int = 0, progress: bool = False, modality: str | None = None, on_disk=None):
    """EmbeddingIndex.build, but filled as `pieces` separate indexes from one trained index, then merged.

    Gives the same index as build() (same training, same vectors in the same cells, same
    tuned parameter); each piece holds only about 1/pieces of the vectors while it is filled.
    `on_disk`: a work folder (IVF kinds): each finished piece is written there and dropped
    from memory, and the merged inverted lists live in `on_disk/index.ivfdata`, memory-mapped
    (FAISS's on-disk inverted lists), so no step holds all vectors in memory; `save` puts
    the file in the index folder.
    """
    import faiss
    from tqdm.auto import tqdm

    from clipkit.index import EmbeddingIndex, GroundTruth
    from clipkit.index_sources import Source as _Source, model_info as _model_info, training_rows

    if not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"pieces={pieces!r}; expected a positive int")
    start_time = time.time()
    rows = training_rows(vectors, count, kind, train_size, max_memory)
    src = _Source(vectors, batch_size, rows, count, modality)
    trained = EmbeddingIndex.trained(src.pool, kind, metric, count=src.size_hint, max_memory=max_memory,
                                     train_size=train_size, seed=seed, model_info=_model_info(model, src.info, src.dim))
    if trained.kind == "hnsw" and pieces > 1:
        raise ValueError(f"kind {kind!r} resolved to HNSW, which cannot be built in pieces; pass kind='ivf' or "
                         f"'ivfpq' (or pieces=1)")
    per_piece = -(-src.size_hint // pieces)
    truth = GroundTruth(src.pool, num_queries, k, metric, seed) if trained.kind != "flat" else None
    if on_disk is not None and trained.kind == "flat":
        raise ValueError("on-disk inverted lists need an IVF kind ('ivf' / 'ivfpq'); a flat index has no lists")
    workdir = Path(on_disk) if on_disk is not None else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    done, current, offset = [], trained.empty_copy(), 0

    def finish(piece):
        if workdir is None:
            done.append(piece)
            return
        path = workdir / f"piece_{len(done):05d}.faiss"
        faiss.write_index(piece.index, str(path))
        done.append(path)                                  # the piece leaves memory
    with tqdm(total=src.n, disable=not progress, unit="vec", desc=f"add {trained.params['factory']} in pieces") as bar:
        for chunk in src.chunks():
            if truth is not None:
                truth.add(chunk, offset)
            bar.update(len(chunk))
            while len(chunk):
                room = per_piece - len(current)
                if workdir is None:
                    current.index.add(chunk[:room])
                else:   # global labels now: merge_ondisk's shift_ids miscounts uneven pieces (faiss 1.15)
                    part = chunk[:room]
                    current.index.add_with_ids(part, np.arange(offset, offset + len(part), dtype=np.int64))
                offset += len(chunk[:room])
                chunk = chunk[room:]
                if len(current) >= per_piece:
                    finish(current)
                    current = trained.empty_copy()
    if len(current) or not done:
        finish(current)
    if workdir is None:
        merged = merge(done)
    else:
        ivfdata = workdir / "index.ivfdata"
        merged = EmbeddingIndex(merge_on_disk(trained, done, ivfdata),
                                {**trained.manifest, "params": dict(trained.params), "on_disk": True})
        merged.ivfdata = ivfdata
        for path in done:
            path.unlink()
    from clipkit.index_sources import checked_metadata as _checked_metadata

    merged.metadata = _checked_metadata(src.metadata, len(merged)) if src.metadata is not None else None
    if truth is not None:
        merged.manifest["params"].update(truth.tune(merged.index, merged.kind, recall_target))
        merged._apply_search_params()
    merged.manifest.update(count=len(merged), pieces=len(done), build_seconds=round(time.time() - start_time, 2))
    return merged


def default_pieces(n: int, d: int, max_memory: int | None) -> int:
    """Pieces so that one piece's raw float32 vectors take at most a quarter of the memory budget."""
    from clipkit.index_tuning import available_memory

    budget = max_memory if max_memory is not None else available_memory() // 2
    return max(1, -(-(n * d * 4) // max(1, budget // 4)))

