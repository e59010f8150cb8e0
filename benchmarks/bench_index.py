"""FAISS indexes on N x 256 clustered vectors (default 1,000,000), side by side in one run:

  A. exact flat search vs clipkit's `auto` index (build time, recall@10, QPS batched / single, size)
  B. build-in-pieces + merge (in memory, and with on-disk inverted lists) vs build-at-once, same kind:
     build time, peak memory of the building process, recall@10, and whether the answers are identical
  C. `add` of 10% more vectors to a built index vs rebuilding on all of them: time, recall@10
  D. clipkit `auto` vs autofaiss `build_index` with the same memory budget: build time, recall@10, QPS, memory
  E. per-vector costs of one kind (train per training vector, add per vector, bytes per vector, recall, QPS):
     the inputs of the README's "scale on paper" (e.g. --kind ivfpq --d 512 --parts E)
     (autofaiss runs from its own virtual env, as it pins numpy<2:
      python3 -m venv /tmp/autofaiss-venv && /tmp/autofaiss-venv/bin/pip install autofaiss "pyarrow<17")

    python benchmarks/bench_index.py                      # the full run (~1 GB of vectors; many minutes)
    python benchmarks/bench_index.py --n 200000           # a quicker look
    python benchmarks/bench_index.py --parts B C          # only some parts

Memory: peak RSS (VmHWM) of each build process, and peak anonymous memory (sampled RssAnon +
RssShmem), which leaves out file-backed pages such as memory-mapped on-disk inverted lists.

Data: a Gaussian mixture on the unit sphere (4,096 centres of uneven popularity,
per-point noise), like CLIP embeddings of a large, clumpy collection, written as an
embedding folder (parts of 100,000 rows) that every builder streams from; the
queries are 1,000 fresh draws from the same mixture (not in the index). Uniform
random vectors are not used: no approximate index can work on them. Builds that
report peak memory run in their own process (VmHWM of that process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10


def clustered(n: int, d: int, centres: np.ndarray, weights: np.ndarray, rng, noise: float = 0.6,
              chunk: int = 100_000):
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        which = rng.choice(len(centres), size=m, p=weights)
        x = centres[which] + (noise / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def _status_kb(*fields: str) -> int:
    values = {ln.split(":")[0]: int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines()
              if ln.split(":")[0] in fields}
    return sum(values.values())


class PeakMemory:
    """Peak of the process's anonymous (+ shared) memory, sampled every 20 ms: what cannot be paged back to a
    file. Memory-mapped index files (on-disk inverted lists) are file-backed and not counted; VmHWM counts them."""

    def __init__(self):
        import threading

        self.peak, self.stop = 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, _status_kb("RssAnon", "RssShmem"))
            time.sleep(0.02)

    def gb(self) -> float:
        return max(self.peak, _status_kb("RssAnon", "RssShmem")) / 2**20


def peak_rss_gb() -> float:
    return _status_kb("VmHWM") / 2**20


def timed_search(search, queries: np.ndarray, single: int) -> tuple[np.ndarray, float, float]:
    t = time.perf_counter()
    _, ids = search(queries, K)
    batched = len(queries) / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in queries[:single]:
        search(q[None], K)
    return ids, batched, single / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- data

def make_data(root: Path, n: int, d: int, queries: int, seed: int) -> None:
    """root/emb (an embedding folder of our format), root/queries.npy, root/truth.npy (exact top-10)."""
    import faiss

    from clipkit.embeddings import FORMAT
    from clipkit.io import write_manifest

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.pareto(1.5, size=len(centres)) + 1
    weights /= weights.sum()
    emb = root / "emb" / "img_emb"
    emb.mkdir(parents=True)
    flat = faiss.IndexFlatIP(d)
    parts = {}
    for i, x in enumerate(clustered(n, d, centres, weights, rng)):
        np.save(emb / f"img_emb_{i:05d}.npy", x)
        parts[f"img_emb/img_emb_{i:05d}.npy"] = len(x)
        flat.add(x)
    write_manifest(root / "emb", FORMAT, parts, model=None, embed_dim=d, count=n, dtype="float32")
    xq = next(clustered(queries, d, centres, weights, np.random.default_rng(seed + 1)))
    np.save(root / "queries.npy", xq)
    t = time.perf_counter()
    _, truth = flat.search(xq, K)
    np.save(root / "truth.npy", truth)
    batched = len(xq) / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in xq[:100]:
        flat.search(q[None], K)
    single = 100 / (time.perf_counter() - t)
    (root / "flat.json").write_text(json.dumps({"qps_batched": batched, "qps_single": single,
                                                "bytes": flat.ntotal * d * 4}))


# ----------------------------------------------------------------------------- one build per process

def worker(args) -> None:
    """Build one variant from root/emb, search the queries, print one JSON line."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    root = Path(args.root)
    xq, truth = np.load(root / "queries.npy"), np.load(root / "truth.npy")
    before = peak_rss_gb()
    anon = PeakMemory()
    budget = int(args.max_memory_gb * 2**30)
    t = time.perf_counter()
    out: dict = {"variant": args.variant}
    if args.variant == "autofaiss":
        from autofaiss import build_index

        with tempfile.TemporaryDirectory() as tmp:
            index, infos = build_index(embeddings=str(root / "emb" / "img_emb"), index_path=f"{tmp}/i.index",
                                       index_infos_path=f"{tmp}/infos.json", metric_type="ip",
                                       max_index_memory_usage=f"{args.max_memory_gb}G",
                                       current_memory_available=f"{2 * args.max_memory_gb}G",
                                       nb_cores=args.threads, verbose=40)
            out["build_s"] = time.perf_counter() - t
            out["params"] = (infos or {}).get("index_key", "") + " " + (infos or {}).get("index_param", "")
            out["bytes"] = os.path.getsize(f"{tmp}/i.index")
        search = index.search
    else:
        from clipkit.index import EmbeddingIndex
        from clipkit.index_pieces import build_in_pieces

        kind = {"auto": "auto", "once": args.kind, "pieces": args.kind, "pieces-disk": args.kind,
                "add": args.kind, "costs": args.kind}[args.variant]
        options = dict(kind=kind, max_memory=budget, train_size=args.train_on)
        if args.variant == "costs":                      # per-vector costs for the README's scale on paper
            from clipkit.embeddings import EmbeddingFolder
            from clipkit.index import GroundTruth
            from clipkit.index_tuning import _nlist_for

            folder = EmbeddingFolder(root / "emb")
            rows = args.train_on or 40 * _nlist_for(folder.count)
            sample = np.concatenate([v for v, _ in folder.chunks("img", 65536, metadata=False)])[:rows]
            t = time.perf_counter()
            index = EmbeddingIndex.trained(sample, kind=args.kind, count=folder.count, train_size=len(sample))
            out["train_s"], out["train_rows"] = time.perf_counter() - t, len(sample)
            t, offset = time.perf_counter(), 0
            for v, _ in folder.chunks("img", 65536, metadata=False):
                index.index.add(v)
            out["add_s"], out["count"] = time.perf_counter() - t, int(index.index.ntotal)
            gt = GroundTruth(sample, 500, K, "ip")
            for v, _ in folder.chunks("img", 65536, metadata=False):
                gt.add(v, offset)
                offset += len(v)
            t = time.perf_counter()
            index.manifest["params"].update(gt.tune(index.index, index.kind, 0.95))
            index._apply_search_params()
            out["tune_s"] = time.perf_counter() - t
            out["build_s"] = out["train_s"] + out["add_s"]
        elif args.variant.startswith("pieces"):
            work = Path(tempfile.mkdtemp(dir=root)) if args.variant == "pieces-disk" else None
            index = build_in_pieces(str(root / "emb"), pieces=args.pieces, on_disk=work, **options)
        elif args.variant == "add":
            from clipkit.embeddings import EmbeddingFolder

            folder = EmbeddingFolder(root / "emb")
            n90 = int(folder.count * 0.9)
            head, tail, seen = [], [], 0
            for v, _ in folder.chunks("img", 65536, metadata=False):
                cut = max(0, min(len(v), n90 - seen))
                head.append(v[:cut]) if cut else None
                tail.append(v[cut:]) if cut < len(v) else None
                seen += len(v)
            index = EmbeddingIndex.build(iter(head), count=n90, **options)
            out["build90_s"] = time.perf_counter() - t
            t = time.perf_counter()
            index.add(iter(tail))
            out["add_s"] = time.perf_counter() - t
        else:
            index = EmbeddingIndex.build(str(root / "emb"), **options)
        out["build_s"] = time.perf_counter() - t if args.variant != "add" else out["build90_s"] + out["add_s"]
        p = index.params
        out["params"] = p["factory"] + "".join(f" {n}={p[n]}" for n in ("nprobe", "efSearch") if n in p)
        out["tuned_recall"] = p.get("tuned_recall")
        with tempfile.NamedTemporaryFile(suffix=".faiss", dir=root) as f:
            faiss.write_index(index.index, f.name)
            out["bytes"] = os.path.getsize(f.name) + (os.path.getsize(index.ivfdata) if index.ivfdata else 0)
        search = index.search
    out["peak_gb"], out["peak_anon_gb"], out["base_gb"] = peak_rss_gb(), anon.gb(), before
    ids, out["qps_batched"], out["qps_single"] = timed_search(search, xq, 100)
    out["recall"] = recall(ids, truth)
    if args.variant == "costs":       # what exact re-ranking of 100 candidates (raw vectors from the folder) can reach
        out["recall_rerank100"] = recall(search(xq, 100)[1], truth)
    np.save(root / f"ids_{args.variant}.npy", ids)
    print("RESULT " + json.dumps(out), flush=True)


def run_variant(root: Path, variant: str, args, python: str = sys.executable) -> dict:
    cmd = [python, __file__, "--worker", "--root", str(root), "--variant", variant, "--kind", args.kind,
           "--pieces", str(args.pieces), "--threads", str(args.threads), "--max-memory-gb", str(args.max_memory_gb)]
    if args.train_on:
        cmd += ["--train-on", str(args.train_on)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if python != sys.executable:        # the autofaiss venv imports nothing of ours
        env["PYTHONPATH"] = ""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(f"  {variant}: failed (rc {done.returncode})\n{done.stderr[-1500:]}", flush=True)
        return {"variant": variant, "failed": True}
    result = json.loads(line[len("RESULT "):])
    print(f"  {variant}: {result}", flush=True)
    return result


def table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print("| build | params | build s | peak RSS GiB | peak anon GiB | recall@10 | QPS batched | QPS single | index MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("failed"):
            print(f"| {r['variant']} | failed | | | | | | | |")
            continue
        print(f"| {r['variant']} | {r.get('params', '')} | {r['build_s']:.1f} | {r['peak_gb']:.2f} | "
              f"{r['peak_anon_gb']:.2f} | "
              f"{r['recall']:.4f} | {r['qps_batched']:,.0f} | {r['qps_single']:,.0f} | {r['bytes'] / 2**20:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", default="ivf", help="kind of the pieces / add comparisons [ivf]")
    ap.add_argument("--pieces", type=int, default=4)
    ap.add_argument("--train-on", type=int, default=None)
    ap.add_argument("--max-memory-gb", type=float, default=2.0, help="budget of clipkit auto and autofaiss [2]")
    ap.add_argument("--autofaiss-python", default="/tmp/autofaiss-venv/bin/python")
    ap.add_argument("--parts", nargs="+", default=["A", "B", "C", "D"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"load average before: {os.getloadavg()} (shared machine: compare side by side, not across runs)")
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_data(root, args.n, args.d, args.queries, args.seed)
        flat = json.loads((root / "flat.json").read_text())
        print(f"data: {args.n:,} x {args.d} as an embedding folder + exact truth in {time.perf_counter() - t:.1f} s; "
              f"flat exact: {flat['qps_batched']:,.0f} QPS batched, {flat['qps_single']:,.0f} single", flush=True)
        results = {}
        for part, variants in (("A", ["auto"]), ("B", ["once", "pieces", "pieces-disk"]), ("C", ["add"]),
                               ("D", ["autofaiss"]), ("E", ["costs"])):
            if part not in args.parts:
                continue
            for v in variants:
                if v in results:
                    continue
                if v == "autofaiss" and not Path(args.autofaiss_python).is_file():
                    print(f"  autofaiss: skipped, no {args.autofaiss_python} (see the module docstring)")
                    continue
                results[v] = run_variant(root, v, args, args.autofaiss_python if v == "autofaiss" else sys.executable)
        same = {v: bool(np.array_equal(np.load(root / f"ids_{v}.npy"), np.load(root / "ids_once.npy")))
                for v in ("pieces", "pieces-disk") if (root / f"ids_{v}.npy").is_file() and
                (root / "ids_once.npy").is_file()}
    conditions = (f"{args.n:,} x {args.d} clustered, {args.queries} held-out queries, k={K}, {args.threads} FAISS "
                  f"threads, budget {args.max_memory_gb} GiB; load average after: {os.getloadavg()}")
    if "A" in args.parts and "auto" in results:
        table([results["auto"]], f"A. clipkit auto ({conditions}); flat exact: {flat['qps_batched']:,.0f} QPS "
                                 f"batched, {flat['qps_single']:,.0f} single, {flat['bytes'] / 2**20:,.0f} MiB")
    if "B" in args.parts:
        table([results[v] for v in ("once", "pieces", "pieces-disk") if v in results],
              f"B. {args.kind} built at once vs in {args.pieces} pieces + merge ({conditions}); "
              f"same answers as at once: {same}")
    if "C" in args.parts and "add" in results and "once" in results:
        r, o = results["add"], results["once"]
        print(f"\nC. add 10% to an index built on 90% vs rebuild on 100% ({args.kind}): add {r['add_s']:.1f} s vs "
              f"rebuild {o['build_s']:.1f} s ({o['build_s'] / max(r['add_s'], 1e-9):.0f}x); recall@10 "
              f"{r['recall']:.4f} (grown) vs {o['recall']:.4f} (rebuilt)")
    if "E" in args.parts and not results.get("costs", {}).get("failed", True):
        r = results["costs"]
        print(f"\nE. per-vector costs of {r['params']} ({conditions}): train {r['train_s']:.1f} s on "
              f"{r['train_rows']:,} vectors ({1e3 * r['train_s'] / r['train_rows']:.2f} ms per training vector), add "
              f"{1e6 * r['add_s'] / r['count']:.1f} us per vector, {r['bytes'] / r['count']:.1f} index bytes per "
              f"vector, recall@10 {r['recall']:.4f} at the tuned parameter ({r['recall_rerank100']:.4f} of the true "
              f"top 10 among the first 100: the reach of exact re-ranking), {r['qps_batched']:,.0f} QPS batched, "
              f"{r['qps_single']:,.0f} single")
    if "D" in args.parts and "autofaiss" in results and "auto" in results:
        table([results["auto"], results["autofaiss"]], f"D. clipkit auto vs autofaiss build_index ({conditions})")


if __name__ == "__main__":
    main()
