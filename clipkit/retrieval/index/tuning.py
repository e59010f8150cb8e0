"""Tuning an approximate index on queries it has never seen: the recall promise of `recall_target`.

    held = HeldOut(pool, num_queries=1000, k=10, metric="ip", seed=0, defer=kind == "hnsw")
    for offset, chunk in ...:  index.add(held.take(chunk, offset))   # exact answers gathered on the way
    params = held.finish(index, kind, target=0.95)    # {"efSearch": 96, "tuned_recall": 0.967, ...}

A real query is not a stored vector. So `num_queries` random rows of the data
(from its first rows, the ones kept in memory for training) are held out:
they are not trained on, their exact top-k among all the other rows is
gathered while the vectors stream past, and they are searched as fresh
queries. IVF kinds index them at once but filter them out of every tuning
search with FAISS's IDSelector, which for inverted lists is the same as
leaving them out; an HNSW graph would route through them, so HNSW adds them
only after tuning (and renumbers its entries back to row order).

The search parameter (nprobe / efSearch) is the smallest of a fixed ladder
whose recall@k on the held-out queries reaches the target with 95%
confidence: the one-sided lower bound mean - 1.645 sd / sqrt(n) over the
per-query recalls, with one pseudo-query at 0 and one at 1 added
(Agresti-Coull's correction, which keeps the bound honest when every query
is perfect); IVF-Flat probing every cell is exact search and meets any
target. Queries drawn from the same distribution as the data then get at
least the target on average. The manifest records the held-out recall,
its bound, the number of queries and this method.
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np

from clipkit.retrieval.index.filters import excluding, search_parameters

CONFIDENCE_Z = 1.645  # one-sided 95%
HELD_OUT_SHARE = 10  # at most 1 row in 10 of the pool is held out
METHOD = (
    "held-out rows searched as fresh queries; smallest value whose one-sided 95% lower confidence "
    "bound of the mean per-query recall@k reaches the target"
)
_PROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096, 8192)
_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of all the entries of `truth` (ignoring -1) present in the same row of `found`."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f, t))
        total += len(t)
    return hits / max(total, 1)


def per_query_recall(
    found: np.ndarray,
    truth: np.ndarray,
    found_scores: np.ndarray | None = None,
    truth_scores: np.ndarray | None = None,
    metric: str = "ip",
) -> np.ndarray:
    """(nq,) share of each truth row (ignoring -1) present in the same row of `found`; 1.0 for an empty row.

    With the exact scores of both (similarity for "ip", distance for "l2"), a found entry also counts when
    it scores as well as the truth row's last entry (to 1e-5): among equal vectors (duplicate images, a
    world of few distinct pictures) which copy exact search returns is arbitrary, and every copy is a right
    answer (ann-benchmarks counts recall by distance the same way)."""
    valid = truth >= 0  # (nq, kt)
    hit = ((found[:, :, None] == truth[:, None, :]).any(axis=1)) & valid  # (nq, kt)
    hits, wanted = hit.sum(axis=1), valid.sum(axis=1)
    if found_scores is not None and truth_scores is not None:
        last = np.take_along_axis(truth_scores, np.maximum(wanted - 1, 0)[:, None], axis=1)  # (nq, 1)
        tol = 1e-5 * np.maximum(1.0, np.abs(last))
        good = (found_scores >= last - tol) if metric == "ip" else (found_scores <= last + tol)
        hits = np.maximum(hits, np.minimum((good & (found >= 0)).sum(axis=1), wanted))
    return hits / np.maximum(wanted, 1) + (wanted == 0)


def recall_lower_bound(recalls: np.ndarray, z: float = CONFIDENCE_Z) -> float:
    """One-sided lower confidence bound of the mean of per-query recalls (see module docstring)."""
    r = np.concatenate([np.asarray(recalls, dtype=np.float64), [0.0, 1.0]])
    return float(r.mean() - z * r.std(ddof=1) / np.sqrt(len(r)))


def search_ladder(index, kind: str, k: int) -> tuple[str, list[int]]:
    """The parameter an approximate kind tunes and the values tried, smallest first."""
    if kind == "hnsw":
        return "efSearch", [v for v in _EF_SEARCH if v >= k]
    nlist = faiss.extract_index_ivf(index).nlist
    return "nprobe", [v for v in _PROBES if v < nlist] + [nlist]


class HeldOut:
    """Rows of the pool kept out of the index while it is tuned, with their exact neighbours (module docstring).

    pool: the first rows of the data (pool row i = global row i). defer: leave the
    held-out rows out of the index until `finish` (HNSW); otherwise `take` returns
    every row and the tuning searches filter the held-out ones out (IVF kinds).
    """

    def __init__(self, pool: np.ndarray, num_queries: int, k: int, metric: str, seed: int = 0, *, defer: bool):
        rng = np.random.default_rng(seed)
        nq = min(num_queries, len(pool) // HELD_OUT_SHARE)
        self.rows = np.sort(rng.choice(len(pool), size=nq, replace=False)).astype(np.int64)
        self.queries = np.ascontiguousarray(pool[self.rows])
        self.k, self.metric, self.defer = k, metric, defer
        self.heap = faiss.ResultHeap(nq, k, keep_max=metric == "ip") if nq else None

    def take(self, chunk: np.ndarray, offset: int) -> np.ndarray:
        """Record the chunk (global rows offset...) in the exact answers; return what to add to the index now."""
        lo, hi = np.searchsorted(self.rows, [offset, offset + len(chunk)])
        keep = np.ones(len(chunk), dtype=bool)
        keep[self.rows[lo:hi] - offset] = False
        kept = chunk[keep] if hi > lo else chunk
        if self.heap is not None and len(kept):
            metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
            exact = faiss.IndexFlat(chunk.shape[1], metric)
            exact.add(kept)
            distances, found = exact.search(self.queries, min(self.k, len(kept)))
            labels = offset + np.flatnonzero(keep)
            self.heap.add_result(distances, np.where(found >= 0, labels[np.maximum(found, 0)], -1))
        return kept if self.defer else chunk

    def finish(self, index, kind: str, target: float) -> dict:
        """Tune `index` (every row taken), put deferred rows back, and return the manifest's tuning record."""
        name, values = search_ladder(index, kind, self.k)
        ps = faiss.ParameterSpace()
        if self.heap is None:  # fewer than 10 rows: nothing to measure on, search exhaustively
            ps.set_index_parameter(index, name, values[-1])
            self._put_back(index)
            return {
                name: int(values[-1]),
                "recall_target": target,
                "recall_k": self.k,
                "tuning_queries": 0,
                "tuning_method": "too few rows to hold any out: the largest value",
            }
        self.heap.finalize()
        truth = self.heap.I
        exclude = None if self.defer else excluding(self.rows)
        # hnsw and ivf store the vectors themselves, so their scores are exact and ties count (per_query_recall)
        exact_scores = kind in ("hnsw", "ivf")
        for value in values:
            if self.defer:
                ps.set_index_parameter(index, name, value)
                scores, found = index.search(self.queries, self.k)
                found = self._rows_of(found)
            else:
                scores, found = index.search(
                    self.queries, self.k, params=search_parameters(index, kind, exclude, **{name: value})
                )
            recalls = per_query_recall(
                found, truth, scores if exact_scores else None, self.heap.D if exact_scores else None, self.metric
            )
            bound = recall_lower_bound(recalls)
            if kind == "ivf" and value == faiss.extract_index_ivf(index).nlist:
                bound = 1.0  # IVF-Flat probing every cell is exact search: recall 1, whatever the sample
            if bound >= target:
                break
        if bound < target:
            warnings.warn(
                f"{kind} index reaches recall@{self.k}={recalls.mean():.3f} (95% lower bound {bound:.3f}) "
                f"< target {target} on {len(self.rows)} held-out queries even at {name}={value}; use "
                f"kind='flat' or a larger index",
                RuntimeWarning,
                stacklevel=4,
            )
        self._put_back(index)
        ps.set_index_parameter(index, name, value)
        return {
            name: int(value),
            "tuned_recall": round(float(recalls.mean()), 4),
            "tuned_recall_lower": round(bound, 4),
            "recall_target": target,
            "recall_k": self.k,
            "tuning_queries": int(len(self.rows)),
            "tuning_method": METHOD,
        }

    def _rows_of(self, positions: np.ndarray) -> np.ndarray:
        """Global rows of positions in an index holding every row but the held-out ones, in order."""
        shift = np.searchsorted(self.rows - np.arange(len(self.rows)), positions, side="right")
        return np.where(positions >= 0, positions + shift, -1)

    def _put_back(self, index) -> None:
        """Deferred (HNSW): add the held-out rows, then renumber the entries so position = global row."""
        if not self.defer or not len(self.rows):
            return
        index.add(self.queries)
        n = int(index.ntotal)
        order = np.concatenate([np.delete(np.arange(n, dtype=np.int64), self.rows), self.rows])
        faiss.downcast_index(index).permute_entries(np.argsort(order).astype(np.int64))
