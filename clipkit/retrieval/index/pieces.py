"""Building an index in pieces from one trained index, then merging them (FAISS's own merge_from).

    index = build_in_pieces("emb/", pieces=4, kind="ivf")                # trained once, filled in 4 pieces, tuned
    index = build_in_pieces("emb/", pieces=8, kind="ivfpq", on_disk="work/")   # merged lists memory-mapped
    trained = EmbeddingIndex.trained(sample, kind="ivf", count=10**8)    # by hand: coarse quantizer (+ codes) once
    piece = trained.empty_copy(); piece.add(vectors_of_rank_r)           # each rank / batch of parts
    index = EmbeddingIndex.merge([piece_0, piece_1, ...])                # ids / metadata concatenated in order

Why pieces: each piece needs only its own vectors in memory while it is
filled, pieces can be filled by different processes (one per rank, from the
rank's parts of an embedding folder), and the one expensive step, training,
happens once. Flat, IVF-Flat and (OPQ-)IVF-PQ merge; HNSW graphs cannot
(FAISS has no merge for them), so a piece build refuses kind='hnsw' with more
than one piece. Tuning is build()'s (held-out queries, build.py), on the merged index.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from clipkit.io.errors import positive_int
from clipkit.retrieval.index.build import BuildPlan
from clipkit.retrieval.index.changes import merge_faiss, merge_on_disk
from clipkit.retrieval.index.core import EmbeddingIndex
from clipkit.retrieval.index.kinds import available_memory
from clipkit.retrieval.index.sources import checked_metadata


def build_in_pieces(
    vectors,
    pieces: int = 2,
    kind: str = "auto",
    metric: str = "ip",
    *,
    model=None,
    recall_target: float = 0.95,
    k: int = 10,
    num_queries: int = 1000,
    max_memory: int | None = None,
    count: int | None = None,
    batch_size: int = 65536,
    train_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    modality: str | None = None,
    on_disk=None,
) -> EmbeddingIndex:
    """EmbeddingIndex.build, but filled as `pieces` separate indexes from one trained index, then merged.

    Gives the same index as build() (same training, same held-out queries, same vectors in
    the same cells, same tuned parameter); each piece holds only about 1/pieces of the
    vectors while it is filled. `on_disk`: a work folder (IVF kinds): each finished piece
    is written there and dropped from memory, and the merged inverted lists live in
    `on_disk/index.ivfdata`, memory-mapped (FAISS's on-disk inverted lists), so no step
    holds all vectors in memory; `save` puts the file in the index folder.
    """
    pieces = positive_int(pieces, "pieces")
    plan = BuildPlan(
        vectors,
        kind,
        metric,
        model=model,
        recall_target=recall_target,
        k=k,
        num_queries=num_queries,
        max_memory=max_memory,
        count=count,
        batch_size=batch_size,
        train_size=train_size,
        seed=seed,
        modality=modality,
    )
    if plan.kind == "hnsw" and pieces > 1:
        raise ValueError(
            f"kind {kind!r} resolved to HNSW, which cannot be built in pieces; pass kind='ivf' or 'ivfpq' (or pieces=1)"
        )
    if on_disk is not None and plan.kind not in ("ivf", "ivfpq"):
        raise ValueError(
            f"on-disk inverted lists need an IVF kind ('ivf' / 'ivfpq'); kind {kind!r} resolved to "
            f"{plan.kind!r}, which has no lists"
        )
    per_piece = -(-plan.source.size_hint // pieces)
    workdir = Path(on_disk) if on_disk is not None else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    done: list = []  # FAISS indexes, or their files when on disk

    def empty():
        index = faiss.clone_index(plan.index)
        index.reset()
        return index

    def finish(piece):
        if workdir is None:
            done.append(piece)
            return
        path = workdir / f"piece_{len(done):05d}.faiss"
        faiss.write_index(piece, str(path))
        done.append(path)  # the piece leaves memory

    current, offset = empty(), 0
    for chunk in plan.chunks(progress):
        while len(chunk):
            part, chunk = chunk[: per_piece - current.ntotal], chunk[per_piece - current.ntotal :]
            if workdir is None:
                current.add(part)
            else:  # global labels now: merge_ondisk's shift_ids miscounts uneven pieces (faiss 1.15)
                current.add_with_ids(part, np.arange(offset, offset + len(part), dtype=np.int64))
            offset += len(part)
            if current.ntotal >= per_piece:
                finish(current)
                current = empty()
    if current.ntotal or not done:
        finish(current)
    manifest = {**plan.manifest, "params": dict(plan.manifest["params"])}
    if workdir is None:
        index = merge_faiss(done, plan.kind)
    else:
        index = merge_on_disk(plan.index, done, workdir / "index.ivfdata")
        manifest["on_disk"] = True
        for path in done:
            path.unlink()
    manifest.update(plan.finish(index), pieces=len(done))
    merged = EmbeddingIndex(index, manifest, metadata=checked_metadata(plan.source.metadata, int(index.ntotal)))
    if workdir is not None:
        merged.ivfdata = workdir / "index.ivfdata"
    return merged


def default_pieces(n: int, d: int, max_memory: int | None) -> int:
    """Pieces so that one piece's raw float32 vectors take at most a quarter of the memory budget."""
    budget = max_memory if max_memory is not None else available_memory() // 2
    return max(1, -(-(n * d * 4) // max(1, budget // 4)))
