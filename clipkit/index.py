"""EmbeddingIndex: a FAISS index with ids, metadata and a manifest that refuses to mix models.

    index = EmbeddingIndex.build(vectors)                      # float32 (n, d); kind="auto"
    index = EmbeddingIndex.build(EmbeddingFolder("emb"))       # or a folder / path written by `clipkit embed`
    index = EmbeddingIndex.build(chunk_iterator, count=10**8)  # or an iterator of (n_i, d) chunks
    scores, ids = index.search(queries, k=10)                  # (nq, k) float32, (nq, k) int64; -1 = no hit
    scores, ids = index.search_text(model, "a red circle", k=10)
    index.lookup(ids[0])                                       # metadata rows of the hits
    index.save("idx"); EmbeddingIndex.load("idx", mmap=True)

Kinds: "flat" (exact), "hnsw" (HNSW32 graph), "ivf" (IVF-Flat), "ivfpq"
(OPQ + IVF + PQ codes, for sets whose raw vectors do not fit in memory).
"auto" picks as autofaiss does, by size and by a memory budget:
flat below 20,000 vectors; HNSW up to 300,000 vectors when vectors + graph fit;
IVF-Flat when the raw vectors fit; OPQ-IVF-PQ beyond.

Approximate kinds are trained on a sample (the first rows of an iterator),
filled in batches, then their search parameter (nprobe / efSearch) is tuned to
the smallest value whose recall@k reaches `recall_target` on held-out queries:
rows of the data searched leave-one-out (the query's own row is ignored in
both the exact and the approximate answer), ground truth computed exactly
while the vectors stream in. The achieved recall is kept in the manifest.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from clipkit.io import atomic_directory, write_json

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
METRICS = ("ip", "l2")
FORMAT_VERSION = 1
INDEX_NAME, MANIFEST_NAME, IDS_NAME, METADATA_NAME = "index.faiss", "manifest.json", "ids.npy", "metadata.parquet"
FLAT_BELOW, HNSW_UP_TO, HNSW_M = 20_000, 300_000, 32
_PROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


# ----------------------------------------------------------------------------- choosing an index

def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), or 4 GiB when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _nlist_for(n: int) -> int:
    """Number of IVF cells: a power of two near 4 * sqrt(n) (autofaiss uses 4-16 sqrt(n))."""
    target = max(1, 4 * int(np.sqrt(max(n, 1))))
    return int(2 ** round(np.log2(target)))


def _pq_m_for(d: int, n: int, budget: int) -> int:
    """PQ sub-quantizers (bytes a vector): the largest of 64..4 dividing d whose codes fit the budget."""
    for m in (64, 48, 32, 24, 16, 8, 4, 2, 1):
        if d % m == 0 and d // m >= 2 and n * (m + 8) * 1.2 <= budget:
            return m
    raise ValueError(f"{n} vectors of dim {d} do not fit in {budget / 2**30:.2f} GiB even as 4-byte PQ codes")


def estimate_memory(kind: str, n: int, d: int, m: int = HNSW_M) -> int:
    """Rough resident bytes of an index of `kind` holding n vectors of dim d."""
    if kind == "flat" or kind == "ivf":
        return int(n * (d * 4 + 8) * 1.05)
    if kind == "hnsw":
        return int(n * (d * 4 + m * 2 * 4 * 1.1 + 16))
    if kind == "ivfpq":
        return int(n * (_pq_m_for(d, n, 1 << 62) + 8) * 1.2)
    raise ValueError(f"kind={kind!r} is not one of {KINDS[1:]}")


def choose_index(n: int, d: int, max_memory: int | None = None) -> tuple[str, str]:
    """(kind, faiss factory string) for n vectors of dim d within max_memory bytes (default: half the free RAM)."""
    budget = int(max_memory if max_memory is not None else available_memory() // 2)
    nlist = _nlist_for(n)
    quantizer = f"IVF{nlist}" if nlist <= 4096 else f"IVF{nlist}_HNSW32"
    if n < FLAT_BELOW and estimate_memory("flat", n, d) <= budget:
        return "flat", "Flat"
    if n <= HNSW_UP_TO and estimate_memory("hnsw", n, d) <= budget:
        return "hnsw", f"HNSW{HNSW_M}"
    if estimate_memory("ivf", n, d) <= budget:
        return "ivf", f"{quantizer},Flat"
    m = _pq_m_for(d, n, budget)
    return "ivfpq", f"OPQ{m},{quantizer},PQ{m}x8"


def factory_for(kind: str, n: int, d: int, max_memory: int | None = None) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    if kind == "auto":
        return choose_index(n, d, max_memory)[1]
    nlist = min(_nlist_for(n), max(1, n // 39))
    quantizer = f"IVF{nlist}" if nlist <= 4096 else f"IVF{nlist}_HNSW32"
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M}"
    if kind == "ivf":
        return f"{quantizer},Flat"
    return f"OPQ{_pq_m_for(d, n, 1 << 62)},{quantizer},PQ{_pq_m_for(d, n, 1 << 62)}x8"


def _kind_of(factory: str) -> str:
    return "flat" if factory == "Flat" else "hnsw" if factory.startswith("HNSW") else "ivfpq" if "PQ" in factory else "ivf"


# ----------------------------------------------------------------------------- sources

def _as_matrix(x, what: str = "vectors", dim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):                         # torch tensor
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


class _Source:
    """Vectors as a known-size array, an EmbeddingFolder, or a one-shot iterator of chunks.

    `buffer` holds the first rows (all of them when they fit): the training sample and the tuning queries.
    """

    def __init__(self, source, batch_size: int, buffer_rows: int, count: int | None, modality: str | None = None):
        from clipkit.embeddings import EmbeddingFolder

        self.metadata, self.info, self.array = None, {}, None
        if isinstance(source, (str, os.PathLike)):
            source = EmbeddingFolder(source)
        if isinstance(source, EmbeddingFolder):
            self.folder, self.n, self.info = source, source.count, source.info
            modality = modality or ("img" if "img" in source.modalities else "text")
            self._iter = (v for v, _ in source.chunks(modality, batch_size, metadata=False))
            if source.has_metadata:
                self.metadata = source.metadata(columns=None)
        elif isinstance(source, np.ndarray) or hasattr(source, "detach"):
            array = self.array = _as_matrix(source)
            self.n = len(array)
            self._iter = (array[i:i + batch_size] for i in range(0, len(array), batch_size))
        elif isinstance(source, Iterable):
            self.n = None
            self._iter = (_as_matrix(c[0] if isinstance(c, tuple) else c, "chunk") for c in source)
        else:
            raise TypeError(f"vectors must be a (n, d) float array, an EmbeddingFolder / its path, or an "
                            f"iterable of (n_i, d) chunks; got {type(source).__name__}")
        self.buffer, rows = [], 0
        for chunk in self._iter:
            if self.buffer and chunk.shape[1] != self.buffer[0].shape[1]:
                raise ValueError(f"chunk of dim {chunk.shape[1]} after chunks of dim {self.buffer[0].shape[1]}")
            self.buffer.append(chunk)
            rows += len(chunk)
            if rows >= buffer_rows:
                break
        else:
            self.n = rows                      # everything fit in the buffer
        if rows == 0:
            raise ValueError("no vectors to index (empty input)")
        self.dim = self.buffer[0].shape[1]
        self.buffered = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        self.size_hint = self.n if self.n is not None else max(count or 0, rows)
        # Where training vectors and tuning queries are drawn from (row i here is global row i).
        self.pool = self.array if self.array is not None else self.buffered

    def chunks(self) -> Iterator[np.ndarray]:
        yield from self.buffer
        self.buffer = []
        for chunk in self._iter:
            if chunk.shape[1] != self.dim:
                raise ValueError(f"chunk of dim {chunk.shape[1]}; expected {self.dim} like the first chunks")
            yield chunk


# ----------------------------------------------------------------------------- the index

class EmbeddingIndex:
    """FAISS index + manifest (+ optional ids and metadata). Build with `build`, or `load` a saved one."""

    def __init__(self, index, manifest: dict, ids: np.ndarray | None = None, metadata: dict | None = None):
        self.index, self.manifest, self.ids, self.metadata = index, manifest, ids, metadata
        self._positions: dict | None = None
        self._apply_search_params()

    # ---------------------------------------------------------------- properties
    dim = property(lambda self: int(self.manifest["dim"]))
    kind = property(lambda self: self.manifest["kind"])
    metric = property(lambda self: self.manifest["metric"])
    params = property(lambda self: dict(self.manifest["params"]))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return (f"EmbeddingIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}, metric={self.metric!r}, "
                f"params={self.params})")

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, vectors, ids=None, kind: str = "auto", metric: str = "ip", *, model=None,
              metadata: dict | None = None, recall_target: float = 0.95, k: int = 10, num_queries: int = 500,
              max_memory: int | None = None, count: int | None = None, batch_size: int = 65536,
              train_size: int | None = None, seed: int = 0, progress: bool = False,
              modality: str | None = None) -> "EmbeddingIndex":
        """Build an index from an array, an EmbeddingFolder (or its path) or an iterator of chunks.

        ids: int64 per row (default: row numbers). model: a ClipModel whose identity and
        embed dim are recorded (for a folder, the one recorded by `clipkit embed` is used).
        metadata: {column: list} aligned with the rows (a folder's metadata by default).
        count: total rows when an iterator's length is unknown (helps `auto`).
        modality: "img" or "text" embeddings of a folder (default: img when present).
        """
        import faiss
        from tqdm.auto import tqdm

        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not one of {METRICS}")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        if not 0 < recall_target <= 1:
            raise ValueError(f"recall_target={recall_target}; expected a number in (0, 1]")
        if k < 1 or num_queries < 1 or batch_size < 1:
            raise ValueError(f"k={k}, num_queries={num_queries}, batch_size={batch_size}; expected positive ints")
        start_time = time.time()
        src = _Source(vectors, batch_size, max(train_size or 0, 200_000), count, modality)
        n_hint, d = src.size_hint, src.dim
        factory = factory_for(kind, n_hint, d, max_memory)
        chosen = _kind_of(factory)
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        index = faiss.index_factory(d, factory, faiss_metric)
        rng = np.random.default_rng(seed)
        sample = src.pool
        if not index.is_trained:
            want = train_size or min(len(sample), max(40 * getattr(faiss.extract_index_ivf(index), "nlist", 1), 10_000))
            train = sample[np.sort(rng.choice(len(sample), size=min(want, len(sample)), replace=False))]
            if "IVF" in factory:
                ivf = faiss.extract_index_ivf(index)
                ivf.cp.niter = 10
                if len(train) < ivf.nlist:
                    raise ValueError(f"{len(train)} training vectors for {ivf.nlist} IVF cells; give more data or kind='flat'")
                ivf = faiss.downcast_index(ivf)
                if hasattr(ivf, "do_polysemous_training"):
                    ivf.do_polysemous_training = False     # on by default in the factory, and very slow
                    ivf.pq.cp.niter = 10
            if factory.startswith("OPQ"):
                faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0)).niter = 5
            index.train(train)
        if chosen == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = 40

        # Held-out queries: sampled rows of the buffer, with exact ground truth gathered as chunks stream in.
        tune = chosen != "flat"
        nq = min(num_queries, len(sample))
        q_rows = np.sort(rng.choice(len(sample), size=nq, replace=False)) if tune else np.zeros(0, dtype=np.int64)
        queries = sample[q_rows]
        kk = k + 1
        heap = faiss.ResultHeap(nq, kk, keep_max=metric == "ip") if tune else None
        added = 0
        with tqdm(total=src.n, disable=not progress, unit="vec", desc=f"add {factory}") as bar:
            for chunk in src.chunks():
                index.add(chunk)
                if tune:
                    exact = faiss.IndexFlat(d, faiss_metric)
                    exact.add(chunk)
                    D, I = exact.search(queries, min(kk, len(chunk)))
                    heap.add_result(D, np.where(I >= 0, I + added, -1))
                added += len(chunk)
                bar.update(len(chunk))
        ids_arr = None
        if ids is not None:
            ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids_arr) != added:
                raise ValueError(f"{len(ids_arr)} ids for {added} vectors; expected one id per vector")
            if not np.array_equal(ids_arr, np.arange(added)):
                if len(np.unique(ids_arr)) != added:
                    raise ValueError("ids must be unique")
            else:
                ids_arr = None
        metadata = metadata if metadata is not None else src.metadata
        if metadata is not None:
            bad = {c: len(v) for c, v in metadata.items() if len(v) != added}
            if bad:
                raise ValueError(f"metadata columns {bad} do not have one row per vector ({added})")

        params: dict = {"factory": factory}
        if "IVF" in factory:
            params["nlist"] = int(faiss.extract_index_ivf(index).nlist)
        if tune:
            heap.finalize()
            params.update(_tune(index, chosen, queries, q_rows, heap.I, k, recall_target))
        model_info = None
        if model is not None:
            if model.embed_dim != d:
                raise ValueError(f"model {model.identity} has embed dim {model.embed_dim}; the vectors have dim {d}")
            model_info = {"identity": model.identity, "embed_dim": model.embed_dim, "source": None}
        elif src.info.get("model"):
            model_info = {"identity": src.info["model"], "embed_dim": int(src.info.get("embed_dim", d)),
                          "source": src.info.get("model_source")}
        from clipkit import __version__

        manifest = {"format_version": FORMAT_VERSION, "dim": d, "metric": metric, "kind": chosen,
                    "requested_kind": kind, "params": params, "count": added, "model": model_info,
                    "clipkit_version": __version__, "build_seconds": round(time.time() - start_time, 2)}
        return cls(index, manifest, ids_arr, metadata)

    # ---------------------------------------------------------------- searching
    def _apply_search_params(self) -> None:
        import faiss

        ps = faiss.ParameterSpace()
        for name in ("nprobe", "efSearch"):
            if name in self.manifest.get("params", {}):
                ps.set_index_parameter(self.index, name, int(self.manifest["params"][name]))

    def set_search_params(self, **params) -> None:
        """Override nprobe / efSearch (kept in the manifest, so save() keeps them)."""
        for name, value in params.items():
            if name not in ("nprobe", "efSearch"):
                raise ValueError(f"unknown search parameter {name!r}; expected nprobe or efSearch")
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive int")
            self.manifest["params"][name] = value
        self._apply_search_params()

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest vectors per query row; ids are -1 where there are fewer than k."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r}; expected a positive int")
        q = _as_matrix(queries, "queries", self.dim)
        scores, positions = self.index.search(q, int(k))
        if self.ids is None:
            return scores, positions
        return scores, np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)

    def check_model(self, model) -> None:
        """Raise ValueError unless `model` is the one the indexed embeddings came from."""
        info = self.manifest.get("model")
        if model.embed_dim != self.dim:
            raise ValueError(f"model {model.config.name!r} embeds in dim {model.embed_dim}; this index holds "
                             f"dim-{self.dim} vectors" + (f" from model {info['identity']}" if info else ""))
        if info and info.get("identity") and info["identity"] != model.identity:
            raise ValueError(f"this index was built from model {info['identity']}; got model {model.identity}. "
                             f"Embed with the same model (or rebuild the index with this one)")

    def search_text(self, model, text: str | list[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        self.check_model(model)
        texts = [text] if isinstance(text, str) else list(text)
        return self.search(model.encode_texts(texts).numpy(), k)

    def search_image(self, model, image, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """`image`: a path, PIL image or uint8 array, or a list of them."""
        self.check_model(model)
        images = image if isinstance(image, (list, tuple)) else [image]
        return self.search(model.encode_images(images).numpy(), k)

    def lookup(self, ids) -> list:
        """Metadata rows ({column: value}) for ids (1-D -> list, 2-D -> list of lists); None for -1."""
        ids = np.asarray(ids)
        if ids.ndim == 2:
            return [self.lookup(row) for row in ids]
        if self.metadata is None:
            return [None if i < 0 else {"id": int(i)} for i in ids]
        if self.ids is not None and self._positions is None:
            self._positions = {int(v): p for p, v in enumerate(self.ids)}
        out = []
        for i in ids.tolist():
            pos = i if self.ids is None else self._positions.get(i, -1)
            if i < 0 or pos < 0 or pos >= len(self):
                out.append(None)
            else:
                out.append({"id": i, **{c: v[pos] for c, v in self.metadata.items()}})
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write index.faiss, manifest.json (+ ids.npy, metadata.parquet) atomically."""
        import faiss

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_NAME))
            if self.ids is not None:
                np.save(tmp / IDS_NAME, self.ids)
            if self.metadata is not None:
                import pyarrow as pa
                import pyarrow.parquet as pq
                pq.write_table(pa.table(self.metadata), tmp / METADATA_NAME)
            write_json(tmp / MANIFEST_NAME, {**self.manifest, "count": len(self)})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = False) -> "EmbeddingIndex":
        """Load a saved index; `mmap=True` maps the FAISS file instead of reading it into memory."""
        import faiss

        directory = Path(directory)
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not a saved EmbeddingIndex: {MANIFEST_NAME} is missing")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{str(manifest_path)!r} has format_version {manifest.get('format_version')!r}; "
                             f"this clipkit reads {FORMAT_VERSION}")
        index = faiss.read_index(str(directory / INDEX_NAME), faiss.IO_FLAG_MMAP if mmap else 0)
        if index.d != manifest["dim"] or index.ntotal != manifest["count"]:
            raise ValueError(f"{str(directory)!r}: the FAISS file holds {index.ntotal} dim-{index.d} vectors but "
                             f"the manifest says {manifest['count']} dim-{manifest['dim']}; the folder is inconsistent")
        ids = np.load(directory / IDS_NAME) if (directory / IDS_NAME).is_file() else None
        metadata = None
        if (directory / METADATA_NAME).is_file():
            import pyarrow.parquet as pq
            metadata = pq.read_table(directory / METADATA_NAME).to_pydict()
        return cls(index, manifest, ids, metadata)


# ----------------------------------------------------------------------------- tuning

def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (ignoring -1) present in the same row of `found`."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f, t))
        total += len(t)
    return hits / max(total, 1)


def _drop_self(I: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own row from its result list and keep k columns."""
    out = np.full((len(I), k), -1, dtype=np.int64)
    for j, (r, row) in enumerate(zip(rows, I)):
        kept = row[row != r][:k]
        out[j, :len(kept)] = kept
    return out


def _tune(index, kind: str, queries, q_rows, truth, k: int, target: float) -> dict:
    """Smallest nprobe / efSearch whose leave-one-out recall@k reaches `target`."""
    import faiss

    ps = faiss.ParameterSpace()
    if kind == "hnsw":
        name, values = "efSearch", [v for v in _EF_SEARCH if v >= k]
    else:
        name = "nprobe"
        nlist = faiss.extract_index_ivf(index).nlist
        values = [v for v in _PROBES if v < nlist] + [nlist]
    gt = _drop_self(truth, q_rows, k)
    best = None
    for value in values:
        ps.set_index_parameter(index, name, value)
        _, I = index.search(queries, k + 1)
        recall = recall_at_k(_drop_self(I, q_rows, k), gt)
        best = (value, recall)
        if recall >= target:
            break
    value, recall = best
    if recall < target:
        warnings.warn(f"{kind} index reaches recall@{k}={recall:.3f} < target {target} even at {name}={value}; "
                      f"use kind='flat' or a larger index", RuntimeWarning, stacklevel=3)
    ps.set_index_parameter(index, name, value)
    return {name: int(value), "tuned_recall": round(float(recall), 4), "recall_target": target, "recall_k": k,
            "tuning_queries": int(len(queries))}
