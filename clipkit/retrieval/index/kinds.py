"""Which FAISS index for which data: what `EmbeddingIndex.build(kind="auto")` picks, by size and memory budget.

    choose_index(n=10**8, d=512, max_memory=64 << 30)   # ("ivfpq", "OPQ64,IVF65536_HNSW32,PQ64x8")
    estimate_memory("hnsw", 10**6, 512)                 # resident bytes
    factory_for("ivf", n, d)                            # the FAISS factory string of a kind

"auto" picks flat below 20,000 vectors; HNSW up to 300,000 vectors when
vectors + graph fit; IVF-Flat when the raw vectors fit; OPQ-IVF-PQ beyond.
autofaiss 2.18 differs at both ends: flat only below 1,000 vectors (HNSW15 up
to 10,000), and HNSW at any size that fits its budget (benchmarks/bench_index.py
compares the two: at 13,860 CLIP embeddings its HNSW tuned down is faster than
exact search; at 1,000,000 x 256 IVF-Flat is faster than its HNSW). The search
parameter of the approximate kinds (efSearch / nprobe) is tuned afterwards (tuning.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_BELOW, HNSW_UP_TO, HNSW_M = 20_000, 300_000, 32


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


def nlist_for(n: int) -> int:
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
    nlist = nlist_for(n)
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
    """The FAISS factory string of `kind` for n vectors of dim d ("auto": choose_index's)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    if kind == "auto":
        return choose_index(n, d, max_memory)[1]
    nlist = min(nlist_for(n), max(1, n // 39))
    quantizer = f"IVF{nlist}" if nlist <= 4096 else f"IVF{nlist}_HNSW32"
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M}"
    if kind == "ivf":
        return f"{quantizer},Flat"
    return f"OPQ{_pq_m_for(d, n, 1 << 62)},{quantizer},PQ{_pq_m_for(d, n, 1 << 62)}x8"


def kind_of(factory: str) -> str:
    """The kind ("flat", "hnsw", "ivf", "ivfpq") a FAISS factory string builds."""
    if factory == "Flat":
        return "flat"
    return "hnsw" if factory.startswith("HNSW") else "ivfpq" if "PQ" in factory else "ivf"
