"""Exact flat search vs clipkit's `auto` index on 1,000,000 x 256 clustered vectors.

    python benchmarks/bench_index.py                 # the full run (~1 GB of vectors, a few minutes)
    python benchmarks/bench_index.py --n 200000      # a quicker look

Data: a Gaussian mixture on the unit sphere (4,096 centres of uneven popularity,
per-point noise), like CLIP embeddings of a large, clumpy collection; the
queries are 1,000 fresh draws from the same mixture (not in the index).
Uniform random vectors are not used: no approximate index can work on them.

Reported per index: build time, recall@10 against the exact answer, queries/s
batched (all queries in one call) and single (one query per call), and memory
(serialised index size; peak RSS of the process is printed at the end).
Goal: `auto` reaches recall@10 >= 0.95 at >= 10x the flat index's batched QPS.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np


def clustered(n: int, d: int, centres: np.ndarray, weights: np.ndarray, rng, noise: float = 0.6,
              chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        which = rng.choice(len(centres), size=m, p=weights)
        x = centres[which] + (noise / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def timed_search(search, queries: np.ndarray, k: int, single: int) -> tuple[np.ndarray, float, float]:
    t = time.perf_counter()
    _, ids = search(queries, k)
    batched = len(queries) / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in queries[:single]:
        search(q[None], k)
    return ids, batched, single / (time.perf_counter() - t)


def index_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def main() -> None:
    import faiss

    from clipkit.index import EmbeddingIndex

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((4096, args.d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.pareto(1.5, size=len(centres)) + 1
    weights /= weights.sum()
    t = time.perf_counter()
    xb = clustered(args.n, args.d, centres, weights, rng)
    xq = clustered(args.queries, args.d, centres, weights, np.random.default_rng(args.seed + 1))
    print(f"data: {args.n} x {args.d} in {time.perf_counter() - t:.1f} s")
    k = 10

    rows = []
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(args.d)
    flat.add(xb)
    flat_build = time.perf_counter() - t
    truth, qps_b, qps_s = timed_search(flat.search, xq, k, args.single)
    rows.append(("flat (exact)", "Flat", flat_build, 1.0, qps_b, qps_s, index_bytes(flat)))
    print(rows[-1], flush=True)

    t = time.perf_counter()
    auto = EmbeddingIndex.build(xb, kind="auto", progress=False)
    build = time.perf_counter() - t
    ids, qps_b2, qps_s2 = timed_search(auto.search, xq, k, args.single)
    p = auto.params
    desc = p["factory"] + "".join(f" {n}={p[n]}" for n in ("nprobe", "efSearch") if n in p)
    rows.append((f"auto -> {auto.kind}", desc, build, recall(ids, truth), qps_b2, qps_s2, index_bytes(auto.index)))
    print(rows[-1], f"tuned recall (leave-one-out) {p.get('tuned_recall')}", flush=True)

    print(f"\n{args.n:,} x {args.d} clustered, {args.queries} held-out queries, k={k}, "
          f"{args.threads} FAISS threads, load average after: {os.getloadavg()}")
    print("| index | params | build s | recall@10 | QPS batched | QPS single | index MB |")
    print("|---|---|---|---|---|---|---|")
    for name, desc, b, r, qb, qs, mem in rows:
        print(f"| {name} | {desc} | {b:.1f} | {r:.4f} | {qb:,.0f} | {qs:,.0f} | {mem / 2**20:,.0f} |")
    print(f"\nspeed-up batched: {qps_b2 / qps_b:.1f}x, single: {qps_s2 / qps_s:.1f}x; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
