"""FAISS indexes on N x 256 clustered vectors: clipkit's `auto` against autofaiss on the recall-speed curve.

  A. (also D) clipkit `auto` vs autofaiss `build_index`, same memory budget. Each builds once in its own process
     (build time, peak memory, the search parameter it chose); then both are searched over one range of their
     parameter (efSearch for HNSW, nprobe for IVF), the contenders interleaved A B A B over --rounds rounds
     (benchmarks/protocol.py): recall@10 on fresh queries (drawn from the data's distribution, not in the index)
     against queries/s, batched and one at a time (median and spread over the rounds). Writes
     results/index_curve_<N>.json, .md (rows at recall 0.95 and 0.99, and each contender's own choice) and .png.
  B. build-in-pieces + merge (in memory, and with on-disk inverted lists) vs build-at-once, same kind:
     build time, peak memory of the building process, recall@10, and whether the answers are identical
  C. `add` of 10% more vectors to a built index vs rebuilding on all of them: time, recall@10
  E. per-vector costs of one kind (train, add, tune, bytes per vector, recall, QPS):
     the inputs of the README's "scale on paper" (e.g. --kind ivfpq --d 512 --parts E)

    python benchmarks/bench_index.py --n 200000                  # part A at 200k (many minutes on 2 cores)
    python benchmarks/bench_index.py --n 1000000 --parts A B C
    python benchmarks/bench_index.py --n 5000 --rounds 3 --results-dir /tmp/r   # a smoke run

autofaiss runs from its own virtual env (it pins numpy<2), given by --autofaiss-python:
    python3 -m venv /tmp/autofaiss-venv && /tmp/autofaiss-venv/bin/pip install autofaiss "pyarrow<17"
Without it, part A measures clipkit alone.

Memory: peak RSS (VmHWM) of each build process, and peak anonymous memory (sampled RssAnon +
RssShmem), which leaves out file-backed pages such as memory-mapped on-disk inverted lists.

Data: a Gaussian mixture on the unit sphere (4,096 centres of uneven popularity,
per-point noise), like CLIP embeddings of a large, clumpy collection, written as an
embedding folder (parts of 100,000 rows) that every builder streams from; the
queries are --queries fresh draws from the same mixture (not in the index).
Uniform random vectors are not used: no approximate index can work on them.
Real CLIP embeddings instead (--embeddings FOLDER --name NAME): an embedding folder's img vectors, --queries of
them held out as the fresh queries and the rest indexed, e.g.
    clipkit embed --model runs/demo/clip/model --shards 'shards/{00000..00009}.tar' --out /tmp/emb
    python benchmarks/bench_index.py --embeddings /tmp/emb --name shapes-demo-clip
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protocol import RESULTS, interleave, markdown_table, write_results

# clipkit is imported inside the functions that use it: the autofaiss workers run this file from
# autofaiss's own virtual env, where clipkit (numpy 2) is not installed.

K = 10
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
NPROBE = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096, 8192)
TARGETS = (0.95, 0.99)


def clustered(n: int, d: int, centres: np.ndarray, weights: np.ndarray, rng, noise: float = 0.6, chunk: int = 100_000):
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        which = rng.choice(len(centres), size=m, p=weights)
        x = centres[which] + (noise / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray, root: Path | None = None) -> float:
    """Mean recall@k of `found` against the exact `truth` ids. With `root` (the data folder: its vectors,
    queries and truth_scores.npy), a found row also counts when its exact similarity ties the truth's k-th,
    as clipkit's tuning counts (clipkit.retrieval.index.tuning.per_query_recall, which this venv-independent
    copy mirrors: autofaiss's venv has no clipkit): duplicates are all right answers."""
    hits = np.array([len(np.intersect1d(f, t)) for f, t in zip(found, truth)], dtype=np.float64)
    if root is not None and (root / "truth_scores.npy").is_file():
        kth = np.load(root / "truth_scores.npy")[:, -1:]
        scores = exact_scores(root, np.load(root / "queries.npy"), found)
        good = ((scores >= kth - 1e-5 * np.maximum(1.0, np.abs(kth))) & (found >= 0)).sum(axis=1)
        hits = np.maximum(hits, np.minimum(good, truth.shape[1]))
    return float(np.mean(hits / truth.shape[1]))


def exact_scores(root: Path, xq: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Inner products of each query with the indexed rows it found (-inf for -1), read from the data's parts."""
    parts = sorted((root / "emb" / "img_emb").glob("img_emb_*.npy"))
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    starts = np.cumsum([0] + [len(a) for a in arrays])
    flat_ids = ids.ravel()
    rows = np.zeros((len(flat_ids), xq.shape[1]), dtype=np.float32)
    part = np.searchsorted(starts, flat_ids, side="right") - 1
    for i, a in enumerate(arrays):
        sel = np.flatnonzero((part == i) & (flat_ids >= 0))
        rows[sel] = a[flat_ids[sel] - starts[i]]
    dots = np.einsum("qkd,qd->qk", rows.reshape(*ids.shape, -1), xq)
    return np.where(ids >= 0, dots, -np.inf).astype(np.float32)


def _status_kb(*fields: str) -> int:
    values = {
        ln.split(":")[0]: int(ln.split()[1])
        for ln in Path("/proc/self/status").read_text().splitlines()
        if ln.split(":")[0] in fields
    }
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


def make_data(root: Path, n: int, d: int, queries: int, seed: int, real: str | None = None) -> tuple[int, int]:
    """root/emb (an embedding folder of our format), root/queries.npy, root/truth.npy (exact top-10).

    Synthetic (real=None): n x d draws from a clustered mixture, and `queries` fresh draws from it. Real (an
    embedding folder, e.g. from `clipkit embed`): its img vectors shuffled, `queries` of them held out as the fresh
    queries (never in the index), the rest indexed. Returns (rows indexed, dimension)."""
    import faiss

    from clipkit.io import write_manifest
    from clipkit.retrieval.embeddings.layout import FORMAT
    from clipkit.retrieval.embeddings.reader import EmbeddingFolder

    rng = np.random.default_rng(seed)
    if real is None:
        centres = rng.standard_normal((4096, d), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        weights = rng.pareto(1.5, size=len(centres)) + 1
        weights /= weights.sum()
        base = clustered(n, d, centres, weights, rng)
        xq = next(clustered(queries, d, centres, weights, np.random.default_rng(seed + 1)))
    else:
        rows = EmbeddingFolder(real).load("img")
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        if len(rows) <= 2 * queries:
            raise SystemExit(f"--embeddings {real!r} holds {len(rows)} rows; need more than 2 x --queries ({queries})")
        rows = rows[rng.permutation(len(rows))]
        xq, rest = rows[:queries].copy(), rows[queries:]
        n, d = len(rest), rows.shape[1]
        base = (rest[s : s + 100_000] for s in range(0, n, 100_000))
    emb = root / "emb" / "img_emb"
    emb.mkdir(parents=True)
    flat = faiss.IndexFlatIP(d)
    parts = {}
    for i, x in enumerate(base):
        np.save(emb / f"img_emb_{i:05d}.npy", x)
        parts[f"img_emb/img_emb_{i:05d}.npy"] = len(x)
        flat.add(x)
    write_manifest(root / "emb", FORMAT, parts, model=None, embed_dim=d, count=n, dtype="float32")
    np.save(root / "queries.npy", xq)
    t = time.perf_counter()
    truth_scores, truth = flat.search(xq, K)
    np.save(root / "truth.npy", truth)
    np.save(root / "truth_scores.npy", truth_scores)
    batched = len(xq) / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in xq[:100]:
        flat.search(q[None], K)
    single = 100 / (time.perf_counter() - t)
    (root / "flat.json").write_text(
        json.dumps({"qps_batched": batched, "qps_single": single, "bytes": flat.ntotal * d * 4})
    )
    return n, d


# ----------------------------------------------------------------------------- workers (one process each)


def worker(args) -> None:
    """One build or one sweep, in its own process; prints one RESULT line of JSON."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    root = Path(args.root)
    if args.variant.startswith("sweep-"):
        out = sweep(args, root)
    elif args.variant == "build-autofaiss":
        out = build_autofaiss(args, root)
    else:
        out = build_clipkit(args, root)
    print("RESULT " + json.dumps(out), flush=True)


def build_autofaiss(args, root: Path) -> dict:
    from autofaiss import build_index

    before, anon, t = peak_rss_gb(), PeakMemory(), time.perf_counter()
    _, infos = build_index(
        embeddings=str(root / "emb" / "img_emb"),
        index_path=str(root / "autofaiss.index"),
        index_infos_path=str(root / "autofaiss.json"),
        metric_type="ip",
        max_index_memory_usage=f"{args.max_memory_gb}G",
        current_memory_available=f"{2 * args.max_memory_gb}G",
        nb_cores=args.threads,
        verbose=40,
    )
    return {
        "variant": "autofaiss",
        "build_s": time.perf_counter() - t,
        "peak_gb": peak_rss_gb(),
        "peak_anon_gb": anon.gb(),
        "base_gb": before,
        "factory": (infos or {}).get("index_key", ""),
        "chosen": (infos or {}).get("index_param", ""),
        "bytes": os.path.getsize(root / "autofaiss.index"),
    }


def build_clipkit(args, root: Path) -> dict:
    """Variants: auto (part A, saved for the sweep), once / pieces / pieces-disk (B), add (C), costs (E)."""
    import faiss

    from clipkit.retrieval.embeddings.reader import EmbeddingFolder
    from clipkit.retrieval.index.build import BuildPlan
    from clipkit.retrieval.index.core import EmbeddingIndex
    from clipkit.retrieval.index.pieces import build_in_pieces

    xq, truth = np.load(root / "queries.npy"), np.load(root / "truth.npy")
    before, anon = peak_rss_gb(), PeakMemory()
    budget = int(args.max_memory_gb * 2**30)
    options = dict(kind="auto" if args.variant == "auto" else args.kind, max_memory=budget, train_size=args.train_on)
    out: dict = {"variant": args.variant}
    t = time.perf_counter()
    if args.variant == "costs":  # per-vector costs for docs/retrieval.md's scale on paper
        plan = BuildPlan(str(root / "emb"), **options)
        out["train_s"], out["train_rows"] = time.perf_counter() - t, len(plan.source.pool)
        t = time.perf_counter()
        for chunk in plan.chunks():
            plan.index.add(chunk)
        out["add_s"], out["count"] = time.perf_counter() - t, int(plan.index.ntotal)  # + the held-out truth
        t = time.perf_counter()
        plan.manifest.update(plan.finish(plan.index))
        out["tune_s"] = time.perf_counter() - t
        out["build_s"] = out["train_s"] + out["add_s"]
        index = EmbeddingIndex(plan.index, plan.manifest)
    elif args.variant.startswith("pieces"):
        work = Path(tempfile.mkdtemp(dir=root)) if args.variant == "pieces-disk" else None
        index = build_in_pieces(str(root / "emb"), pieces=args.pieces, on_disk=work, **options)
    elif args.variant == "add":
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
        index = EmbeddingIndex.build(str(root / "emb"), recall_target=args.recall, **options)
    out.setdefault("build_s", time.perf_counter() - t if args.variant != "add" else out["build90_s"] + out["add_s"])
    p = index.params
    out["factory"], out["kind"] = p["factory"], index.kind
    out["chosen"] = ",".join(f"{n}={p[n]}" for n in ("nprobe", "efSearch") if n in p)
    out["tuned_recall"], out["tuned_recall_lower"] = p.get("tuned_recall"), p.get("tuned_recall_lower")
    with tempfile.NamedTemporaryFile(suffix=".faiss", dir=root) as f:
        faiss.write_index(index.index, f.name)
        out["bytes"] = os.path.getsize(f.name) + (os.path.getsize(index.ivfdata) if index.ivfdata else 0)
    out["peak_gb"], out["peak_anon_gb"], out["base_gb"] = peak_rss_gb(), anon.gb(), before
    ids, out["qps_batched"], out["qps_single"] = timed_search(index.search, xq, 100)
    out["recall"] = recall(ids, truth, root)
    if args.variant == "costs":  # what exact re-ranking of 100 candidates (raw vectors from the folder) can reach
        out["recall_rerank100"] = recall(index.search(xq, 100)[1], truth)  # ids: 100 found vs 10 true
    if args.variant == "auto":
        index.save(root / "clipkit_idx")
    np.save(root / f"ids_{args.variant}.npy", ids)
    return out


def sweep(args, root: Path) -> dict:
    """Search the saved index at every value of the range: {"recall@v", "qps_batched@v", "qps_single@v"}."""
    import faiss

    xq, truth = np.load(root / "queries.npy"), np.load(root / "truth.npy")
    name, values = args.param, [int(v) for v in args.values.split(",")]
    if args.variant == "sweep-clipkit":
        from clipkit.retrieval.index.core import EmbeddingIndex

        index = EmbeddingIndex.load(root / "clipkit_idx")
        set_value, search = (lambda v: name != "none" and index.set_search_params(**{name: v})), index.search
    else:
        index = faiss.read_index(str(root / "autofaiss.index"))
        ps = faiss.ParameterSpace()
        set_value, search = (lambda v: name != "none" and ps.set_index_parameter(index, name, v)), index.search
    out: dict = {}
    for v in values:
        set_value(v)
        ids, out[f"qps_batched@{v}"], out[f"qps_single@{v}"] = timed_search(search, xq, args.single)
        out[f"recall@{v}"] = recall(ids, truth, root)
        if out[f"recall@{v}"] >= args.stop_at and v >= int(args.must or 0):  # the builder's own value is measured
            break
    return out


def run_worker(root: Path, variant: str, args, python: str = sys.executable, extra: list | None = None) -> dict:
    cmd = [
        python,
        __file__,
        "--worker",
        "--root",
        str(root),
        "--variant",
        variant,
        "--kind",
        args.kind,
        "--pieces",
        str(args.pieces),
        "--threads",
        str(args.threads),
        "--max-memory-gb",
        str(args.max_memory_gb),
        "--recall",
        str(args.recall),
        "--single",
        str(args.single),
        "--stop-at",
        str(args.stop_at),
        *(extra or []),
    ]
    if args.train_on:
        cmd += ["--train-on", str(args.train_on)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if python != sys.executable:  # the autofaiss venv imports nothing of ours
        env["PYTHONPATH"] = ""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{variant} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


# ----------------------------------------------------------------------------- part A: the curve


def data_label(args) -> str:
    kind = f"real embeddings from {args.embeddings}" if args.embeddings else "clustered"
    return f"{args.n:,} x {args.d} {kind}"


def search_range(factory: str, chosen: str) -> tuple[str, list[int]]:
    """(parameter, values) for an index of this factory string; the value the builder chose is included."""
    own = dict(re.findall(r"(\w+)=(\d+)", chosen))
    if "IVF" not in factory and not factory.startswith("HNSW"):  # exact (Flat): nothing to vary
        return "none", [0]
    if factory.startswith("HNSW"):
        return "efSearch", sorted(
            {*(v for v in EF_SEARCH if v >= K), *([int(own["efSearch"])] if "efSearch" in own else [])}
        )
    nlist = int(re.search(r"IVF(\d+)", factory).group(1))
    return "nprobe", sorted(
        {*(v for v in NPROBE if v < nlist), nlist, *([int(own["nprobe"])] if "nprobe" in own else [])}
    )


def curve_rows(name: str, build: dict, param: str, runs) -> list[dict]:
    """One row per value of the range: recall, median + spread of QPS batched and single."""
    rows = []
    for key in sorted({k.split("@")[1] for n, _, m, _ in runs.runs if n == name for k in m}, key=int):
        b, s = runs.summary(f"qps_batched@{key}").get(name), runs.summary(f"qps_single@{key}").get(name)
        r = runs.values(f"recall@{key}", name)
        if b is None or not r:
            continue
        rows.append(
            {
                "contender": name,
                "factory": build["factory"],
                "param": param,
                "value": int(key),
                "recall": r[0],
                "qps_batched": b["median"],
                "qps_batched_spread": b["spread"],
                "qps_single": s["median"],
                "qps_single_spread": s["spread"],
                "rounds": b["rounds"],
            }
        )
    return rows


def part_curve(root: Path, args, flat: dict) -> None:
    from clipkit.io.figures import new_figure, save_figure

    builds = {"clipkit": run_worker(root, "auto", args)}
    print(f"  clipkit auto: {builds['clipkit']}", flush=True)
    if Path(args.autofaiss_python).is_file():
        builds["autofaiss"] = run_worker(root, "build-autofaiss", args, args.autofaiss_python)
        print(f"  autofaiss: {builds['autofaiss']}", flush=True)
    else:
        print(f"  autofaiss: skipped, no {args.autofaiss_python} (see the module docstring)", flush=True)
    ranges = {name: search_range(b["factory"], b["chosen"]) for name, b in builds.items()}
    if len({p for p, _ in ranges.values()}) == 1:  # one kind of parameter: search both over one range
        union = sorted({v for _, vs in ranges.values() for v in vs})
        ranges = {name: (p, [v for v in union if p == "efSearch" or v <= max(vs)]) for name, (p, vs) in ranges.items()}

    def contender(name: str):
        param, values = ranges[name]
        python = args.autofaiss_python if name == "autofaiss" else sys.executable
        own = dict(re.findall(r"(\w+)=(\d+)", builds[name]["chosen"])).get(param, "0")
        extra = ["--param", param, "--values", ",".join(map(str, values)), "--must", own]
        return lambda: run_worker(root, f"sweep-{name}", args, python, extra)

    runs = interleave({name: contender(name) for name in builds}, rounds=args.rounds)
    rows = [row for name in builds for row in curve_rows(name, builds[name], ranges[name][0], runs)]
    table_rows = []
    for name, b in builds.items():
        mine = [r for r in rows if r["contender"] == name]
        own = dict(re.findall(r"(\w+)=(\d+)", b["chosen"]))
        built = next((r for r in mine if r["param"] == "none" or str(r["value"]) == own.get(r["param"])), None)
        picks = [("as built", built)]
        picks += [(f"recall >= {t}", next((r for r in mine if r["recall"] >= t), None)) for t in TARGETS]
        for label, r in picks:
            if r is None:
                best = max((x["recall"] for x in mine), default=float("nan"))
                table_rows.append([name, b["factory"], label, "not reached", f"{best:.4f} (best)", "", ""])
                continue
            table_rows.append(
                [
                    name,
                    b["factory"],
                    label,
                    f"{r['param']}={r['value']}",
                    f"{r['recall']:.4f}",
                    f"{r['qps_batched']:,.0f} (±{r['qps_batched_spread']:.0%})",
                    f"{r['qps_single']:,.0f} (±{r['qps_single_spread']:.0%})",
                ]
            )
    conditions = (
        f"{data_label(args)}, {args.queries} fresh queries, recall@{K}, {args.threads} FAISS "
        f"threads, budget {args.max_memory_gb} GiB, {args.rounds} interleaved rounds (median, ±spread)"
    )
    table = (
        f"Recall@{K} on fresh queries vs queries/s ({conditions}); exact flat search: "
        f"{flat['qps_batched']:,.0f} QPS batched, {flat['qps_single']:,.0f} single.\n\n"
        + markdown_table(
            ["index", "factory", "row", "parameter", f"recall@{K}", "QPS batched", "QPS single"], table_rows
        )
    )
    name = f"index_curve_{args.name or f'{args.n // 1000}k'}"
    path = write_results(
        name,
        {
            "conditions": conditions,
            "builds": builds,
            "curve": rows,
            "flat": flat,
            "contended_windows": runs.contended_windows(),
        },
        table,
        results_dir=args.results_dir,
    )
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for contender_name, colour in zip(builds, ("tab:blue", "tab:orange")):
        mine = [r for r in rows if r["contender"] == contender_name]
        for key, style, label in (("qps_batched", "-o", "batched"), ("qps_single", "--s", "single")):
            ax.plot(
                [r["recall"] for r in mine],
                [r[key] for r in mine],
                style,
                color=colour,
                markersize=3,
                label=f"{contender_name} {builds[contender_name]['factory']} ({label})",
            )
        own = next(
            (
                r
                for r in mine
                if r["param"] == "none" or f"{r['param']}={r['value']}" in builds[contender_name]["chosen"].split(",")
            ),
            None,
        )
        if own is not None:
            ax.plot([own["recall"]], [own["qps_batched"]], "*", color=colour, markersize=12)
    for t in TARGETS:
        ax.axvline(t, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{K} on fresh queries")
    ax.set_ylabel("queries / s")
    ax.set_title(f"{data_label(args)}, budget {args.max_memory_gb} GiB (star: the builder's own choice)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, Path(args.results_dir) / f"{name}.png")
    print("\n" + table + f"\nwritten: {path}, {path.with_suffix('.md')}, {path.with_suffix('.png')}")


# ----------------------------------------------------------------------------- parts B, C, E


def table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(
        "| build | params | build s | peak RSS GiB | peak anon GiB | recall@10 | QPS batched | QPS single | index MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['factory']} {r['chosen']} | {r['build_s']:.1f} | {r['peak_gb']:.2f} | "
            f"{r['peak_anon_gb']:.2f} | {r['recall']:.4f} | {r['qps_batched']:,.0f} | {r['qps_single']:,.0f} | "
            f"{r['bytes'] / 2**20:,.0f} |"
        )


def other_parts(root: Path, args, conditions: str) -> None:
    results = {}
    for part, variants in (("B", ["once", "pieces", "pieces-disk"]), ("C", ["once", "add"]), ("E", ["costs"])):
        if part in args.parts:
            for v in variants:
                if v not in results:
                    results[v] = run_worker(root, v, args)
                    print(f"  {v}: {results[v]}", flush=True)
    if "B" in args.parts:
        same = {
            v: bool(np.array_equal(np.load(root / f"ids_{v}.npy"), np.load(root / "ids_once.npy")))
            for v in ("pieces", "pieces-disk")
        }
        table(
            [results[v] for v in ("once", "pieces", "pieces-disk")],
            f"B. {args.kind} built at once vs in {args.pieces} pieces + merge ({conditions}); "
            f"same answers as at once: {same}",
        )
    if "C" in args.parts:
        r, o = results["add"], results["once"]
        print(
            f"\nC. add 10% to an index built on 90% vs rebuild on 100% ({args.kind}): add {r['add_s']:.1f} s vs "
            f"rebuild {o['build_s']:.1f} s ({o['build_s'] / max(r['add_s'], 1e-9):.0f}x); recall@10 "
            f"{r['recall']:.4f} (grown) vs {o['recall']:.4f} (rebuilt)"
        )
    if "E" in args.parts:
        r = results["costs"]
        print(
            f"\nE. per-vector costs of {r['factory']} {r['chosen']} ({conditions}): train {r['train_s']:.1f} s on "
            f"{r['train_rows']:,} vectors ({1e3 * r['train_s'] / r['train_rows']:.2f} ms per training vector), add "
            f"{1e6 * r['add_s'] / r['count']:.1f} us per vector, tune {r['tune_s']:.1f} s, "
            f"{r['bytes'] / r['count']:.1f} index bytes per vector, recall@10 {r['recall']:.4f} at the tuned "
            f"parameter ({r['recall_rerank100']:.4f} of the true top 10 among the first 100: the reach of exact "
            f"re-ranking), {r['qps_batched']:,.0f} QPS batched, {r['qps_single']:,.0f} single"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000, help="fresh queries (not in the index) [1000]")
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time [100]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of part A (>= 3 for a spread) [3]")
    ap.add_argument("--recall", type=float, default=0.95, help="clipkit's recall_target in part A [0.95]")
    ap.add_argument("--stop-at", type=float, default=0.999, help="stop a sweep once recall@10 reaches this [0.999]")
    ap.add_argument("--kind", default="ivf", help="kind of parts B, C, E [ivf]")
    ap.add_argument("--pieces", type=int, default=4)
    ap.add_argument("--train-on", type=int, default=None)
    ap.add_argument("--max-memory-gb", type=float, default=2.0, help="budget of clipkit auto and autofaiss [2]")
    ap.add_argument(
        "--autofaiss-python",
        default="/tmp/autofaiss-venv/bin/python",
        help="python of a venv with autofaiss (it pins numpy<2) [/tmp/autofaiss-venv/bin/python]",
    )
    ap.add_argument(
        "--results-dir", default=str(RESULTS), help="where part A writes json / md / png [benchmarks/results]"
    )
    ap.add_argument("--parts", nargs="+", default=["A"], help="A (= D), B, C, E [A]")
    ap.add_argument(
        "--embeddings",
        default=None,
        help="an embedding folder of real vectors (e.g. from `clipkit embed`) instead of the synthetic mixture: "
        "--queries of its rows are held out as the fresh queries, the rest are indexed (--n, --d ignored)",
    )
    ap.add_argument("--name", default=None, help="results name: results/index_curve_NAME.* [<n>k]")
    for hidden in ("--root", "--variant", "--param", "--values", "--must"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    args.parts = ["A" if p == "D" else p for p in args.parts]
    print(f"load average before: {os.getloadavg()} (shared machine: read the interleaved medians)")
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        args.n, args.d = make_data(root, args.n, args.d, args.queries, args.seed, args.embeddings)
        flat = json.loads((root / "flat.json").read_text())
        print(
            f"data: {args.n:,} x {args.d} as an embedding folder + exact truth in {time.perf_counter() - t:.1f} s; "
            f"flat exact: {flat['qps_batched']:,.0f} QPS batched, {flat['qps_single']:,.0f} single",
            flush=True,
        )
        if "A" in args.parts:
            part_curve(root, args, flat)
        conditions = (
            f"{data_label(args)}, {args.queries} fresh queries, k={K}, {args.threads} FAISS "
            f"threads, budget {args.max_memory_gb} GiB"
        )
        other_parts(root, args, conditions)


if __name__ == "__main__":
    main()
