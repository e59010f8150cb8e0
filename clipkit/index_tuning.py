"""Choosing and tuning a FAISS index: what `EmbeddingIndex.build(kind="auto")` picks, and its search parameter.

    choose_index(n=10**8, d=512, max_memory=64 << 30)   # ("ivfpq", "OPQ64,IVF65536_HNSW32,PQ64x8")
    estimate_memory("hnsw", 10**6, 512)                 # resident bytes
    factory_for("ivf", n, d)                            # the FAISS factory string of a kind

"auto" picks as autofaiss does, by size and by a memory budget: flat below
20,000 vectors; HNSW up to 300,000 vectors when vectors + graph fit; IVF-Flat
when the raw vectors fit; OPQ-IVF-PQ beyond. `tune` then finds the smallest
nprobe / efSearch whose recall@k reaches the target on held-out queries.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
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


def kind_of(factory: str) -> str:
    return "flat" if factory == "Flat" else "hnsw" if factory.startswith("HNSW") else "ivfpq" if "PQ" in factory else "ivf"


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


def tune(index, kind: str, queries, q_rows, truth, k: int, target: float) -> dict:
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


class GroundTruth:
    """Exact top-(k+1) neighbours of held-out queries, gathered while the vectors stream past.

    The queries are `num_queries` random rows of `pool` (the first rows of the data,
    global row i = pool row i); each is searched leave-one-out (its own row is ignored
    in the exact and in the approximate answer). Add every chunk with its global
    offset, then `tune(index, kind, target)`.
    """

    def __init__(self, pool: np.ndarray, num_queries: int, k: int, metric: str, seed: int = 0):
        import faiss

        rng = np.random.default_rng(seed)
        nq = min(num_queries, len(pool))
        self.rows = np.sort(rng.choice(len(pool), size=nq, replace=False))
        self.queries, self.k, self.metric = pool[self.rows], k, metric
        self.heap = faiss.ResultHeap(nq, k + 1, keep_max=metric == "ip")

    def add(self, chunk: np.ndarray, offset: int) -> None:
        import faiss

        exact = faiss.IndexFlat(chunk.shape[1], faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2)
        exact.add(chunk)
        D, I = exact.search(self.queries, min(self.k + 1, len(chunk)))
        self.heap.add_result(D, np.where(I >= 0, I + offset, -1))

    def tune(self, index, kind: str, target: float) -> dict:
        self.heap.finalize()
        return tune(index, kind, self.queries, self.rows, self.heap.I, self.k, target)
