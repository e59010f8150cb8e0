"""What an EmbeddingIndex is built from: arrays, embedding folders or chunk iterators, checked on the way in.

src = Source(vectors_or_folder_or_chunks, batch_size, buffer_rows, count)
src.pool        # the first rows (training sample, tuning queries); src.chunks() streams everything
check_finite(x, "queries")      # ValueError naming the count of NaN/inf rows and the first one
checked_ids(ids, n), checked_metadata(metadata, n)    # one per vector, or ValueError
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator

import faiss
import numpy as np

from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.retrieval.index.kinds import available_memory, nlist_for


def as_matrix(x, what: str = "vectors", dim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{what} must be a (n, d) array; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{what} must be floating point (float32 preferred); got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have dim {x.shape[1]}; this index holds dim-{dim} vectors")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_finite(x: np.ndarray, what: str, start: int = 0, rest: Iterable = ()) -> None:
    """Raise ValueError naming how many rows hold NaN/inf (counting on through `rest`) and the first bad row."""
    bad = ~np.isfinite(x).all(axis=1)
    if not bad.any():
        return
    count = int(bad.sum()) + sum(int((~np.isfinite(c).all(axis=1)).sum()) for c in rest)
    raise ValueError(
        f"{what}: {count} row(s) hold NaN or inf, the first is row {start + int(np.argmax(bad))}; "
        f"non-finite vectors cannot be indexed or searched (a model with NaN weights makes them)"
    )


class Source:
    """Vectors as a known-size array, an EmbeddingFolder, or a one-shot iterator of chunks.

    `buffer` holds the first rows (all of them when they fit): the training sample and the tuning queries.
    """

    def __init__(self, source, batch_size: int, buffer_rows: int, count: int | None, modality: str | None = None):
        self.metadata, self.info, self.array, self.what = None, {}, None, "vectors"
        self.record: dict | None = None  # what the index remembers of an embedding folder (folder_record)
        self.n: int | None  # rows in all (None: an iterator of unknown length, until exhausted)
        if isinstance(source, (str, os.PathLike)):
            source = EmbeddingFolder(source)
        if isinstance(source, EmbeddingFolder):
            self.what = f"embeddings in {str(source.root)!r}"
            self.folder, self.n, self.info = source, source.count, source.info
            modality = modality or ("img" if "img" in source.modalities else "text")
            self.record = folder_record(source, modality)
            self._iter = (v for v, _ in source.chunks(modality, batch_size, metadata=False))
            if source.has_metadata:
                self.metadata = source.metadata(columns=None)
        elif isinstance(source, np.ndarray) or hasattr(source, "detach"):
            array = self.array = as_matrix(source)
            self.n = len(array)
            self._iter = (array[i : i + batch_size] for i in range(0, len(array), batch_size))
        elif isinstance(source, Iterable):
            self.n = None
            self._iter = (as_matrix(c[0] if isinstance(c, tuple) else c, "chunk") for c in source)
        else:
            raise TypeError(
                f"vectors must be a (n, d) float array, an EmbeddingFolder / its path, or an "
                f"iterable of (n_i, d) chunks; got {type(source).__name__}"
            )
        self.buffer: list[np.ndarray] = []
        rows = 0
        for chunk in self._iter:
            if self.buffer and chunk.shape[1] != self.buffer[0].shape[1]:
                raise ValueError(f"chunk of dim {chunk.shape[1]} after chunks of dim {self.buffer[0].shape[1]}")
            check_finite(chunk, self.what, rows, self._iter)
            self.buffer.append(chunk)
            rows += len(chunk)
            if rows >= buffer_rows:
                break
        else:
            self.n = rows  # everything fit in the buffer
        if rows == 0:
            raise ValueError("no vectors to index (empty input)")
        self.dim, self.buffered_rows = self.buffer[0].shape[1], rows
        self.buffered = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        self.size_hint = self.n if self.n is not None else max(count or 0, rows)
        # Where training vectors and tuning queries are drawn from (row i here is global row i).
        self.pool = self.array if self.array is not None else self.buffered

    def chunks(self) -> Iterator[np.ndarray]:
        yield from self.buffer  # checked as they were buffered
        start, self.buffer = self.buffered_rows, []
        for chunk in self._iter:
            if chunk.shape[1] != self.dim:
                raise ValueError(f"chunk of dim {chunk.shape[1]}; expected {self.dim} like the first chunks")
            check_finite(chunk, self.what, start, self._iter)
            start += len(chunk)
            yield chunk


def folder_record(folder: EmbeddingFolder, modality: str) -> dict:
    """What an index records of an embedding folder it holds (manifest "sources"): its absolute path, the
    modality, the row count, when, and a digest of the sizes and sha256 its manifest records for that
    modality's parts, so the same embeddings are recognised wherever they were copied (`add` refuses them)."""
    prefix = f"{modality}_emb/"
    parts = {
        rel: [rec.get("bytes"), rec.get("sha256")]
        for rel, rec in sorted(folder.info["parts"].items())
        if rel.startswith(prefix)
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return {
        "path": os.path.abspath(folder.root),
        "modality": modality,
        "count": folder.count,
        "digest": digest,
        "time": round(time.time(), 1),
    }


def trained_fingerprint(index) -> str:
    """sha256 of the empty trained index (quantizer, transforms, codebooks): pieces must share it to merge."""
    empty = faiss.clone_index(index)
    empty.reset()
    return hashlib.sha256(faiss.serialize_index(empty).tobytes()).hexdigest()[:16]


def model_info(model, info: dict, d: int) -> dict | None:
    """The model record of a manifest: from a ClipModel, else from an embedding folder's manifest."""
    if model is not None:
        if model.embed_dim != d:
            raise ValueError(f"model {model.identity} has embed dim {model.embed_dim}; the vectors have dim {d}")
        return {"identity": model.identity, "embed_dim": model.embed_dim, "source": None}
    if info.get("model"):
        return {
            "identity": info["model"],
            "embed_dim": int(info.get("embed_dim", d)),
            "source": info.get("model_source"),
        }
    return None


def checked_ids(ids, n: int) -> np.ndarray | None:
    """int64 ids, one per vector and unique; None when they are just 0..n-1."""
    if ids is None:
        return None
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{len(arr)} ids for {n} vectors; expected one id per vector")
    if np.array_equal(arr, np.arange(n)):
        return None
    if len(np.unique(arr)) != n:
        raise ValueError("ids must be unique")
    return arr


def checked_metadata(metadata: dict | None, n: int) -> dict | None:
    if metadata is None:
        return None
    bad = {c: len(v) for c, v in metadata.items() if len(v) != n}
    if bad:
        raise ValueError(f"metadata columns {bad} do not have one row per vector ({n})")
    return {c: list(v) for c, v in metadata.items()}


def training_rows(vectors, count: int | None, kind: str, train_size: int | None, max_memory: int | None) -> int:
    """How many first rows to keep for training and tuning: `train_size` if given, else enough for FAISS's
    39-40 points per IVF cell (40 x nlist for the size) within a quarter of the memory budget, at least 200,000."""
    if train_size is not None:
        return max(train_size, 1)
    n, d = count, None
    if hasattr(vectors, "shape") and len(getattr(vectors, "shape", ())) == 2:
        n, d = vectors.shape
    elif isinstance(vectors, (str, os.PathLike, EmbeddingFolder)):
        folder = vectors if not isinstance(vectors, (str, os.PathLike)) else EmbeddingFolder(vectors)
        n, d = folder.count, (folder.dim if folder.modalities else None)
    if not n or not d or kind in ("flat", "hnsw"):
        return 200_000
    budget = max_memory if max_memory is not None else available_memory() // 2
    return max(200_000, min(40 * nlist_for(n), budget // 4 // (4 * d)))
