"""`clipkit serve` on loopback: kept-alive vs new connections, text and image-upload search, batching, generation.

    python benchmarks/bench_serve.py              # 100,000 items; 1, 8, 32 clients; 3 rounds of 4 s a point
    python benchmarks/bench_serve.py --quick      # the same points, 3 rounds of 1.5 s
    python benchmarks/bench_serve.py --smoke      # 2,000 items, 1 and 8 clients, 1 round of 0.5 s: does it run?

Setup: 100,000 clustered unit vectors (a Gaussian mixture, like CLIP embeddings of a clumpy
collection) indexed by `EmbeddingIndex.build(kind="auto")` with a `shapes-small` model recorded
in the manifest, so every query is a real text- or image-tower forward pass + a FAISS search.
Servers run as `clipkit serve` subprocesses on free 127.0.0.1 ports.

1. Connections (the default, micro-batching server): POST /search with a text ({"text": ..., "k": 10})
   and with an uploaded 64x64 PNG (multipart), by N client threads, each either on one kept-alive
   HTTP/1.1 connection (what browsers, requests.Session and httpx do) or on a new connection per
   request (what curl does). The two modes run interleaved (A B, B A, ... `--rounds` rounds, by
   benchmarks/protocol.py); each window reports p50 / p99 latency, requests/s and the server
   process's CPU time a request. Goal: p50 at 1 kept-alive client <= 1.5x the server's
   CPU time a request, for text and image search.
2. Batching: text search at the largest client count, micro-batching on vs `--no-batching`,
   interleaved the same way (goal: >= 2x requests/s at 32 clients, p99 < 100 ms at 8).
3. Generation: POST /generate at 1 and 4 clients on a tiny untrained unCLIP (1 image, 10 steps:
   the machinery, not a real decoder), then 16 clients at once on 1 worker + 4 queue places: the
   extra requests must get 503 + Retry-After at once, never time out.

Every window is bounded in time and in requests; the whole run stops by itself. A window in
which other processes (not this script, not the servers) took more than 0.25 of a core is marked
and left out of the medians (all windows are used, marked, when none is clean). Results go to
benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from protocol import interleave, markdown_table, write_results

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown")
SHAPES = ("circle", "square", "triangle", "star", "heart", "hexagon", "cross", "diamond")
MAX_OTHER_CORES = 0.25
BOUNDARY = "clipkit-bench-boundary"


def queries(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"a {'small' if rng.random() < 0.5 else 'large'} {rng.choice(COLORS)} {rng.choice(SHAPES)}"
        f"{' wearing a hat' if rng.random() < 0.5 else ''} number {i}"
        for i in range(n)
    ]


def requests_for(kind: str, n: int) -> list[tuple[bytes, str]]:
    """(body, content type) of n distinct /search requests: JSON texts or multipart PNG uploads."""
    if kind == "text":
        return [(json.dumps({"text": t, "k": 10}).encode(), "application/json") for t in queries(n, 0)]
    rng = np.random.default_rng(1)
    out = []
    for _ in range(min(n, 64)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + buffer.getvalue()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        out.append((body, f"multipart/form-data; boundary={BOUNDARY}"))
    return out


def build(work: Path, n: int) -> dict:
    """The index (model recorded), the model folder and a tiny unCLIP pipeline on it."""
    import torch

    import clipkit
    from clipkit.unclip import DecoderConfig, DecoderUNet, DiffusionPrior, PriorConfig, UnCLIP

    model = clipkit.create("shapes-small", seed=0)
    model.save(work / "model")
    rng = np.random.default_rng(0)
    d = model.embed_dim
    centres = rng.standard_normal((max(10, n // 100), d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 / np.sqrt(d) * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    start = time.perf_counter()
    index = clipkit.EmbeddingIndex.build(x, kind="auto", model=model)
    index.save(work / "index")
    print(f"index: {index!r}, built in {time.perf_counter() - start:.1f} s")
    torch.manual_seed(0)
    decoder = DecoderUNet(
        DecoderConfig(embed_dim=d, channels=(16, 32), attention_levels=(False, True), heads=2, context_tokens=2)
    )
    prior = DiffusionPrior(PriorConfig(embed_dim=d, width=32, layers=1, heads=2))
    UnCLIP(model, decoder, prior, clip_path=str(work / "model")).save(work / "unclip")
    return {"index": work / "index", "model": work / "model", "unclip": work / "unclip", "kind": index.kind}


class Server:
    """`clipkit serve` in a subprocess on a free loopback port (bench_gpu.py serves with it too)."""

    def __init__(self, index: Path, model: Path, *flags: str, unclip: Path | None = None, start_timeout: float = 300.0):
        cmd = [
            sys.executable,
            "-m",
            "clipkit",
            "serve",
            "--index",
            str(index),
            "--model",
            str(model),
            *(["--unclip", str(unclip)] if unclip is not None else []),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *flags,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines, self.port = [], None
        timer = threading.Timer(start_timeout, self.proc.kill)  # a server that never says its port
        timer.start()
        try:
            for line in self.proc.stdout:
                lines.append(line)
                match = re.search(r"open http://127\.0\.0\.1:(\d+)/", line)
                if match:
                    self.port = int(match.group(1))
                    break
        finally:
            timer.cancel()
        if self.port is None:
            self.stop()
            raise RuntimeError("clipkit serve did not start:\n" + "".join(lines[-20:]))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain its output

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def metrics(self) -> dict:
        """GET /metrics, parsed: {(name, ((label, value), ...)): value}."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load(
    port: int,
    path: str,
    bodies: list[tuple[bytes, str]],
    clients: int,
    seconds: float,
    max_requests: int,
    keep_alive: bool = True,
    timeout: float = 30.0,
) -> dict:
    """`clients` threads POST bodies back to back for `seconds` (or max_requests), kept-alive or one connection each."""
    lock, latencies, statuses, retry_after = threading.Lock(), [], {}, []
    stop_at = [0.0]
    sent = [0]

    def client(c: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout) if keep_alive else None
        i = c
        while True:
            with lock:
                if time.perf_counter() >= stop_at[0] or sent[0] >= max_requests:
                    break
                sent[0] += 1
            body, ctype = bodies[i % len(bodies)]
            i += clients
            start = time.perf_counter()
            try:
                if not keep_alive:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request("POST", path, body, {"content-type": ctype})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.status == 503:
                    retry_after.append(int(response.getheader("retry-after", "0")))
                if not keep_alive:
                    conn.close()
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets: the failures we look for
                status = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            with lock:
                latencies.append((status, time.perf_counter() - start))
                statuses[status] = statuses.get(status, 0) + 1
        if conn is not None:
            conn.close()

    start = time.perf_counter()
    stop_at[0] = start + seconds
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    ok = np.array([s for st, s in latencies if st == "200"]) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": elapsed,
        "statuses": statuses,
        "rps": len(ok) / elapsed,
        "errors": len(latencies) - len(ok),
        "p50": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
        "p99": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
        "max": float(max((s for _, s in latencies), default=0) * 1000),
        "retry_after": retry_after,
        "rejected_ms": [s * 1000 for st, s in latencies if st == "503"],
    }


def window(server: Server, **load_args) -> dict:
    """One measurement: load + the server's CPU time a request + its mean search batch."""
    before, cpu = server.metrics(), server.cpu_seconds()
    r = load(server.port, "/search", **load_args)
    cpu = server.cpu_seconds() - cpu
    after = server.metrics()

    def delta(name):
        key = (name, (("batcher", "search"),))
        return after.get(key, 0) - before.get(key, 0)

    batches = delta("clipkit_serve_batches_total")
    return {
        "p50": r["p50"],
        "p99": r["p99"],
        "rps": r["rps"],
        "errors": float(r["errors"]),
        "requests": float(r["requests"]),
        "cpu_ms": 1000 * cpu / max(r["requests"], 1),
        "server_cpu_s": cpu,
        "mean_batch": delta("clipkit_serve_batch_items_total") / batches if batches else float("nan"),
    }


def summarise(runs, keys=("p50", "p99", "rps", "cpu_ms", "mean_batch", "errors")) -> dict:
    """Per contender and key: median, min, max over rounds; rounds where other processes took CPU left out.

    protocol.CpuWindow counts the servers' CPU as "others" (they are not our waited-for children),
    so the share of others is the window's foreign CPU minus the servers' CPU measured in it.
    """
    out = {}
    for name in dict.fromkeys(n for n, *_ in runs.runs):
        rows = []
        for n, _r, m, w in runs.runs:
            if n == name:
                other = None if w.foreign_cores is None else max(0.0, w.foreign_cores - m["server_cpu_s"] / w.wall)
                rows.append((m, other))
        clean = [m for m, other in rows if other is None or other <= MAX_OTHER_CORES] or [m for m, _ in rows]
        out[name] = {
            "rounds": len(rows),
            "clean_rounds": sum(1 for _, o in rows if o is None or o <= MAX_OTHER_CORES),
            "other_cores": [None if o is None else round(o, 2) for _, o in rows],
        }
        for key in keys:
            values = [m[key] for m in clean if not np.isnan(m[key])]
            if values:
                med = statistics.median(values)
                out[name][key] = {
                    "median": med,
                    "min": min(values),
                    "max": max(values),
                    "spread": (max(values) - min(values)) / med if med else float("nan"),
                }
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1.5 s windows instead of 4")
    p.add_argument("--smoke", action="store_true", help="2,000 items, clients 1,8, 1 round of 0.5 s (a run check)")
    p.add_argument("--n", type=int, default=None, help="index size [100000; smoke 2000]")
    p.add_argument("--clients", default=None, help="client counts [1,8,32; smoke 1,8]")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per point [3; smoke 1]")
    p.add_argument("--seconds", type=float, default=None, help="seconds a window [4, quick 1.5, smoke 0.5]")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the servers' encoders [fp32]")
    p.add_argument("--no-generation", action="store_true", help="skip the generation and overload part")
    p.add_argument("--results-dir", default=None, help="where serve.json / serve.md go [benchmarks/results]")
    args = p.parse_args()
    n = args.n or (2000 if args.smoke else 100_000)
    seconds = args.seconds or (0.5 if args.smoke else 1.5 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.smoke else 3)
    counts = [int(c) for c in (args.clients or ("1,8" if args.smoke else "1,8,32")).split(",")]
    cap = int(seconds * 2000)  # requests a window, whatever the speed
    print(
        f"bench_serve: {os.cpu_count()} CPUs; {rounds} interleaved rounds of {seconds:g} s windows; windows in "
        f"which other processes take > {MAX_OTHER_CORES} of a core are marked and left out of the medians"
    )
    results: dict = {
        "setup": {"n": n, "seconds": seconds, "rounds": rounds, "clients": counts, "precision": args.precision},
        "connections": [],
        "batching": None,
    }
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        world = build(Path(tmp), n)
        results["setup"]["kind"] = world["kind"]
        extra = ("--precision", args.precision)
        on = Server(world["index"], world["model"], *extra, unclip=world["unclip"])
        off = Server(world["index"], world["model"], "--no-batching", *extra, unclip=world["unclip"])
        try:
            bodies = {kind: requests_for(kind, 4096) for kind in ("text", "image")}
            for server in (on, off):  # warm up both
                for kind in bodies:
                    load(server.port, "/search", bodies[kind][:32], 4, 5.0, 32)
            for kind in ("text", "image"):
                for clients in counts:
                    print(f"\n{kind} search, {clients} client(s): kept-alive vs new connection")
                    common = dict(bodies=bodies[kind], clients=clients, seconds=seconds, max_requests=cap)
                    runs = interleave(
                        {
                            "kept-alive": partial(window, on, keep_alive=True, **common),
                            "new connection": partial(window, on, keep_alive=False, **common),
                        },
                        rounds=rounds,
                        max_foreign_cores=float("inf"),
                    )
                    for mode, summary in summarise(runs).items():
                        results["connections"].append({"query": kind, "clients": clients, "mode": mode, **summary})
            clients = max(counts)
            print(f"\ntext search, {clients} kept-alive clients: micro-batching on vs off")
            common = dict(bodies=bodies["text"], clients=clients, seconds=seconds, max_requests=cap)
            runs = interleave(
                {"batching on": partial(window, on, **common), "batching off": partial(window, off, **common)},
                rounds=rounds,
                max_foreign_cores=float("inf"),
            )
            results["batching"] = {"clients": clients, **summarise(runs)}
            if not args.no_generation:
                results.update(generation(on, seconds))
        finally:
            on.stop()
            off.stop()
    table = report(results)
    path = write_results("serve", results, table, **({"results_dir": args.results_dir} if args.results_dir else {}))
    print(f"\nwrote {path} and {path.with_suffix('.md')}")
    return 0


def generation(server: Server, seconds: float) -> dict:
    prompts = [
        (json.dumps({"text": t, "num_images": 1, "steps": 10, "seed": i}).encode(), "application/json")
        for i, t in enumerate(queries(64, 1))
    ]
    out = {"generate": []}
    for clients in (1, 4):
        r = load(server.port, "/generate", prompts, clients, seconds * 2, max_requests=4 * clients, timeout=120)
        out["generate"].append({k: r[k] for k in ("clients", "requests", "p50", "p99", "errors", "statuses")})
    burst = load(server.port, "/generate", prompts, 16, seconds * 2, max_requests=32, timeout=120)
    rejected = burst["rejected_ms"]
    out["overload"] = {
        "requests": burst["requests"],
        "statuses": burst["statuses"],
        "rejected_p50_ms": float(np.median(rejected)) if rejected else None,
        "rejected_max_ms": max(rejected, default=None),
        "retry_after": sorted(set(burst["retry_after"])),
        "timeouts": sum(v for k, v in burst["statuses"].items() if not k.isdigit()),
    }
    return out


def _fmt(stat: dict | None, digits: int = 1) -> str:
    if not stat:
        return "n/a"
    if stat["min"] == stat["max"]:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def report(results: dict) -> str:
    """Print the tables and the goals; return the Markdown table for results/serve.md."""
    s = results["setup"]
    print(
        f"\nPOST /search, {s['n']:,}-item {s['kind']} index, shapes-small towers, k=10; median (min-max) of "
        f"{s['rounds']} interleaved {s['seconds']:g} s windows"
    )
    headers = [
        "query",
        "clients",
        "connection",
        "p50 ms",
        "p99 ms",
        "req/s",
        "server CPU ms/req",
        "p50 / CPU",
        "clean rounds",
    ]
    rows = []
    for r in results["connections"]:
        ratio = r["p50"]["median"] / r["cpu_ms"]["median"] if "p50" in r and "cpu_ms" in r else float("nan")
        rows.append(
            [
                r["query"],
                r["clients"],
                r["mode"],
                _fmt(r.get("p50")),
                _fmt(r.get("p99")),
                _fmt(r.get("rps")),
                _fmt(r.get("cpu_ms"), 2),
                f"{ratio:.2f}",
                f"{r['clean_rounds']}/{r['rounds']}",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for line in [headers, *rows]:
        print(" | ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    b = results["batching"]
    if b:
        print(
            f"\nbatching at {b['clients']} kept-alive clients (text): on {_fmt(b['batching on'].get('rps'))} req/s, "
            f"p99 {_fmt(b['batching on'].get('p99'))} ms, mean batch {_fmt(b['batching on'].get('mean_batch'))}; "
            f"off {_fmt(b['batching off'].get('rps'))} req/s, p99 {_fmt(b['batching off'].get('p99'))} ms"
        )
    for g in results.get("generate", []):
        print(
            f"POST /generate, {g['clients']} client(s): {g['requests']} requests, p50 {g['p50']:.0f} ms, "
            f"p99 {g['p99']:.0f} ms, statuses {g['statuses']}"
        )
    o = results.get("overload")
    if o:
        print(
            f"overload (16 clients, 1 worker + 4 queue places): statuses {o['statuses']}; 503s in p50 "
            f"{o['rejected_p50_ms'] or float('nan'):.1f} ms, Retry-After {o['retry_after']} s; "
            f"timeouts {o['timeouts']}"
        )
    goals = []
    for kind in ("text", "image"):
        one = next(
            (
                r
                for r in results["connections"]
                if r["query"] == kind and r["clients"] == 1 and r["mode"] == "kept-alive"
            ),
            None,
        )
        if one and "p50" in one:
            ratio = one["p50"]["median"] / one["cpu_ms"]["median"]
            goals.append(
                f"{kind}: p50 at 1 kept-alive client {one['p50']['median']:.1f} ms = {ratio:.2f}x the "
                f"server's CPU a request ({'yes' if ratio <= 1.5 else 'NO'}, goal <= 1.5x)"
            )
    errors = sum(r["errors"]["median"] for r in results["connections"] if "errors" in r)
    goals.append(f"search errors: {'none' if errors == 0 else errors}")
    print("\ngoals: " + "; ".join(goals))
    results["goals"] = goals
    return markdown_table(headers, rows) + "\n" + "\n".join(f"- {g}" for g in goals) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
