"""Building an index: train an empty FAISS index, stream the vectors in, tune on held-out queries.

    plan = BuildPlan(vectors, kind="auto", metric="ip", recall_target=0.95, ...)   # checks, trains, holds out
    for chunk in plan.chunks(progress=True):      # what to add now, in row order
        plan.index.add(chunk)                     # (build_in_pieces spreads them over pieces instead)
    manifest.update(plan.finish(plan.index))      # tuned parameter, count, build time

What EmbeddingIndex.build and build_in_pieces share. Approximate kinds are
trained on a sample (a random subset of the first rows of the data, the
held-out tuning queries excepted), filled in batches, then their search
parameter is tuned on the held-out queries (tuning.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

import faiss
import numpy as np
from tqdm.auto import tqdm

from clipkit import __version__
from clipkit.retrieval.index.kinds import KINDS, factory_for, kind_of
from clipkit.retrieval.index.sources import (
    Source,
    as_matrix,
    check_finite,
    model_info,
    trained_fingerprint,
    training_rows,
)
from clipkit.retrieval.index.tuning import HeldOut

METRICS = ("ip", "l2")
FORMAT_VERSION = 2


def train_index(
    sample: np.ndarray,
    factory: str,
    metric: str = "ip",
    *,
    requested_kind: str = "auto",
    train_size: int | None = None,
    seed: int = 0,
    model_info: dict | None = None,
    skip_rows: np.ndarray | None = None,
) -> tuple[faiss.Index, dict]:
    """(empty trained FAISS index, manifest) for a factory string (kinds.factory_for), trained on the (n, d) `sample`.

    The training rows are a random subset (`train_size`, default max(40 x cells, 10,000)) of
    the sample's rows, `skip_rows` excepted (the held-out tuning queries).
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {METRICS}")
    sample = as_matrix(sample, "training sample")
    check_finite(sample, "training sample")
    index = faiss.index_factory(
        sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    )
    if not index.is_trained:
        _train(index, factory, sample, train_size, seed, skip_rows)
    chosen = kind_of(factory)
    if chosen == "hnsw":
        cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw.efConstruction = 40
    params: dict = {"factory": factory}
    if "IVF" in factory:
        params["nlist"] = int(faiss.extract_index_ivf(index).nlist)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dim": int(sample.shape[1]),
        "metric": metric,
        "kind": chosen,
        "requested_kind": requested_kind,
        "params": params,
        "count": 0,
        "model": model_info,
        "clipkit_version": __version__,
        "trained_sha256": trained_fingerprint(index),
    }
    return index, manifest


def _train(index, factory: str, sample: np.ndarray, train_size: int | None, seed: int, skip_rows) -> None:
    ivf = faiss.extract_index_ivf(index)
    candidates = np.arange(len(sample)) if skip_rows is None else np.delete(np.arange(len(sample)), skip_rows)
    want = train_size or min(len(candidates), max(40 * ivf.nlist, 10_000))
    rng = np.random.default_rng(seed)
    train = sample[np.sort(rng.choice(candidates, size=min(want, len(candidates)), replace=False))]
    ivf.cp.niter = 10
    if len(train) < ivf.nlist:
        raise ValueError(
            f"{len(train)} training vectors for {ivf.nlist} IVF cells; give more data "
            f"(--train-on / train_size) or kind='flat'"
        )
    ivf = cast(faiss.IndexIVF, faiss.downcast_index(ivf))  # the concrete IVF class (IVFFlat, IVFPQ)
    if hasattr(ivf, "do_polysemous_training"):
        if len(train) < 256:
            raise ValueError(
                f"{len(train)} training vectors; PQ codes need at least 256 (and ~10,000 "
                f"for good codes); give more data or use kind='ivf' / 'flat'"
            )
        ivfpq = cast(faiss.IndexIVFPQ, ivf)
        # on by default in the factory, and very slow (a field faiss's 1.15 stubs leave out)
        ivfpq.do_polysemous_training = False  # type: ignore[attr-defined]
        ivfpq.pq.cp.niter = 10
    if factory.startswith("OPQ"):
        # faiss's stubs type `chain` as a list; it is a SWIG VectorTransformVector, read with .at()
        chain = cast(faiss.IndexPreTransform, faiss.downcast_index(index)).chain
        cast(faiss.OPQMatrix, faiss.downcast_VectorTransform(chain.at(0))).niter = 5  # type: ignore[attr-defined]
    index.train(train)


HNSW_ADD_BLOCK_BYTES = 2 << 30  # vectors an HNSW build adds at once (BuildPlan.chunks): a copy while it adds


class BuildPlan:
    """Checked options, the source of vectors, the trained empty index and the held-out tuning queries.

    Arguments as EmbeddingIndex.build's. `index` and `manifest` are the trained empty
    index and its manifest; `chunks()` yields what to add, in row order; `finish(index)`
    tunes the filled index and returns the manifest fields to update.
    """

    def __init__(
        self,
        vectors,
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
        modality: str | None = None,
    ):
        if not 0 < recall_target <= 1:
            raise ValueError(f"recall_target={recall_target}; expected a number in (0, 1]")
        if k < 1 or num_queries < 1 or batch_size < 1:
            raise ValueError(f"k={k}, num_queries={num_queries}, batch_size={batch_size}; expected positive ints")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size={train_size}; expected a positive int")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not one of {METRICS}")
        self.started, self.recall_target = time.time(), recall_target
        src = self.source = Source(
            vectors, batch_size, training_rows(vectors, count, kind, train_size, max_memory), count, modality
        )
        factory = factory_for(kind, src.size_hint, src.dim, max_memory)
        self.kind = kind_of(factory)
        self.held = (
            None if self.kind == "flat" else HeldOut(src.pool, num_queries, k, metric, seed, defer=self.kind == "hnsw")
        )
        self.index, self.manifest = train_index(
            src.pool,
            factory,
            metric,
            requested_kind=kind,
            train_size=train_size,
            seed=seed,
            model_info=model_info(model, src.info, src.dim),
            skip_rows=None if self.held is None else self.held.rows,
        )

    def chunks(self, progress: bool = False) -> Iterator[np.ndarray]:
        """The vectors to add now, chunk by chunk in row order (held-out rows of an HNSW build left out).

        HNSW gets them in blocks of up to HNSW_ADD_BLOCK_BYTES (one block for any index `auto` makes HNSW):
        FAISS builds a better graph from one add than from many. Measured on 199,000 CLIP embeddings of the
        shapes world (many exact duplicates), recall@10 at efSearch 64: one add 0.992, blocks of 100,000
        0.970, of 65,536 0.964, of 20,000 0.952; on distinct vectors the gap is smaller (benchmarks/bench_index.py)."""
        offset, block, size = 0, [], 0
        with tqdm(
            total=self.source.n, disable=not progress, unit="vec", desc=f"add {self.manifest['params']['factory']}"
        ) as bar:
            for chunk in self.source.chunks():
                out = chunk if self.held is None else self.held.take(chunk, offset)
                offset += len(chunk)
                bar.update(len(chunk))
                if self.kind != "hnsw":
                    yield out
                    continue
                block.append(out)
                size += out.nbytes
                if size >= HNSW_ADD_BLOCK_BYTES:
                    yield np.concatenate(block)
                    block, size = [], 0
            if block:
                yield np.concatenate(block)

    def finish(self, index) -> dict:
        """Tune the filled FAISS `index` (its held-out rows go back in) -> manifest fields to update."""
        params = dict(self.manifest["params"])
        if self.held is not None:
            params.update(self.held.finish(index, self.kind, self.recall_target))
        sources = [self.source.record] if self.source.record is not None else []
        return {
            "params": params,
            "count": int(index.ntotal),
            "build_seconds": round(time.time() - self.started, 2),
            "sources": sources,
        }
