"""Search restricted to some rows of an index (a filter), with FAISS's own ID selectors.

    mask = np.zeros(len(index), bool); mask[allowed_positions] = True
    scores, ids = index.search(queries, k=10, mask=mask)        # EmbeddingIndex.search calls filtered_search
    excluding(rows)                                            # a selector for "every row but these" (tuning.py)

Every kind filters inside FAISS (`SearchParameters(sel=IDSelectorBitmap)`):
flat search is then exact over the allowed rows. An approximate index
searched with a filter sees fewer candidates, so the search widens with the
share of rows allowed: IVF probes nprobe / share cells, HNSW explores
efSearch / share candidates. When few rows are allowed, fewer than a flat
index would hold in `auto` (20,000) or than the widened graph search would
visit, the answer is exact: IVF probes every cell (for IVF-Flat, exact
distances; for IVF-PQ, every allowed code), HNSW reads the allowed vectors
from its storage and compares them all. Fewer allowed rows than k give id -1.
"""

from __future__ import annotations

import math
from typing import cast

import faiss
import numpy as np

from clipkit.retrieval.index.kinds import FLAT_BELOW, HNSW_M


def excluding(rows: np.ndarray) -> faiss.IDSelector:
    """A selector of every label except `rows` (FAISS keeps a reference to the inner selector)."""
    return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64)))


def search_parameters(
    index, kind: str, sel=None, *, nprobe: int | None = None, efSearch: int | None = None
) -> faiss.SearchParameters:
    """SearchParameters for one search of `index` ("flat", "hnsw", "ivf" or "ivfpq"), with a selector.

    FAISS's parameter objects start from their own defaults (nprobe 1, efSearch 16), not
    from the index's settings, so the index's current value is carried over unless given.
    """
    # The fields go in as keywords: faiss's Python wrapper then keeps `sel` alive as long as the parameters (a
    # selector set as an attribute would be freed under FAISS). Its 1.15 stubs declare neither the keywords nor
    # SearchParametersHNSW, hence the two narrow ignores.
    if kind == "hnsw":
        ef = efSearch if efSearch is not None else cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw.efSearch
        return faiss.SearchParametersHNSW(sel=sel, efSearch=int(ef))  # type: ignore[attr-defined]
    if kind in ("ivf", "ivfpq"):
        probes = nprobe if nprobe is not None else faiss.extract_index_ivf(index).nprobe
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(probes))  # type: ignore[call-arg]
    return faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]


def filtered_search(index, kind: str, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS (distances, positions) of the k nearest rows with mask[position] True (see module docstring)."""
    n, allowed = len(mask), int(np.count_nonzero(mask))
    if allowed == 0:
        return (np.full((len(queries), k), np.nan, np.float32), np.full((len(queries), k), -1, np.int64))
    if allowed == n:
        return index.search(queries, k)
    share = allowed / n
    if kind == "hnsw":
        ef = math.ceil(cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw.efSearch / share)
        # exact when comparing every allowed row costs less than the widened walk (~ M neighbours per visit)
        if allowed <= max(FLAT_BELOW, HNSW_M * ef):
            return _exact_on_rows(index, queries, k, np.flatnonzero(mask))
    bitmap = np.packbits(mask, bitorder="little")  # bit i of byte i // 8 = row i (FAISS's bitmap order)
    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
    if kind == "hnsw":
        params = search_parameters(index, kind, sel, efSearch=ef)
    elif kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        probes = ivf.nlist if allowed <= FLAT_BELOW else min(ivf.nlist, math.ceil(ivf.nprobe / share))
        params = search_parameters(index, kind, sel, nprobe=probes)
    else:
        params = search_parameters(index, kind, sel)
    return index.search(queries, k, params=params)


def _exact_on_rows(index, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compare the queries with every one of `rows` (vectors read back from the index's flat storage)."""
    exact = faiss.IndexFlat(index.d, index.metric_type)
    exact.add(index.reconstruct_batch(rows))
    distances, found = exact.search(queries, k)
    return distances, np.where(found >= 0, rows[np.maximum(found, 0)], -1)
