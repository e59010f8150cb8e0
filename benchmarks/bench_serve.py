"""`clipkit serve` under load on loopback: text search with micro-batching on vs off, generation, overload.

    python benchmarks/bench_serve.py              # 100,000 items; N = 1, 8, 32 clients; 10 s a point
    python benchmarks/bench_serve.py --quick      # the same points, 3 s each

Setup: 100,000 clustered unit vectors (a Gaussian mixture, like CLIP embeddings of a clumpy
collection) indexed by `EmbeddingIndex.build(kind="auto")` with a `shapes-small` model
(`clipkit.create("shapes-small", seed=0)`) recorded in the manifest, so every query is a real
text-tower forward pass + a FAISS search. Two servers run as `clipkit serve` subprocesses on free
127.0.0.1 ports, one with micro-batching (the default) and one with `--no-batching`; each point
measures one, then the other, under the same machine conditions. Clients are threads with
keep-alive connections, each sending POST /search {"text": ..., "k": 10} back to back for a fixed
time (bounded also in count). Reported: requests/s, p50 / p99 latency, errors, mean batch size,
and the server process's CPU time a request (what requests/s becomes on a machine nobody else uses).
Then POST /generate latency at 1 and 4 clients (a tiny untrained unCLIP on the same CLIP, 1 image,
10 steps: the cost of the machinery, not of a real decoder), and an overload burst of 16 clients on
the default generation queue (1 worker, 4 waiting places): extra requests must get 503 +
Retry-After at once, never time out.

Goals (issue 14): zero errors; p99 < 100 ms at 8 clients; batching >= 2x the requests/s of
one-at-a-time encoding at 32 clients. Loopback only; the whole run is bounded (about 2 minutes
quick, 4 full, plus start-up).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown")
SHAPES = ("circle", "square", "triangle", "star", "heart", "hexagon", "cross", "diamond")


def queries(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"a {'small' if rng.random() < .5 else 'large'} {rng.choice(COLORS)} {rng.choice(SHAPES)}"
            f"{' wearing a hat' if rng.random() < .5 else ''} number {i}" for i in range(n)]


def build(work: Path, n: int) -> dict:
    """The 100k index (model recorded), the model folder and a tiny unCLIP pipeline on it."""
    import torch

    import clipkit
    from clipkit.index import EmbeddingIndex
    from clipkit.unclip import DecoderConfig, DecoderUNet, DiffusionPrior, PriorConfig, UnCLIP

    model = clipkit.create("shapes-small", seed=0)
    model.save(work / "model")
    rng = np.random.default_rng(0)
    d = model.embed_dim
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 / np.sqrt(d) * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    start = time.perf_counter()
    index = EmbeddingIndex.build(x, kind="auto", model=model)
    index.save(work / "index")
    print(f"index: {index!r}, built in {time.perf_counter() - start:.1f} s")
    torch.manual_seed(0)
    decoder = DecoderUNet(DecoderConfig(embed_dim=d, channels=(16, 32), attention_levels=(False, True), heads=2,
                                        context_tokens=2))
    prior = DiffusionPrior(PriorConfig(embed_dim=d, width=32, layers=1, heads=2))
    UnCLIP(model, decoder, prior, clip_path=str(work / "model")).save(work / "unclip")
    return {"index": work / "index", "model": work / "model", "unclip": work / "unclip", "kind": index.kind}


class Server:
    """`clipkit serve` in a subprocess on a free loopback port."""

    def __init__(self, world: dict, *flags: str):
        cmd = [sys.executable, "-m", "clipkit", "serve", "--index", str(world["index"]), "--model", str(world["model"]),
               "--unclip", str(world["unclip"]), "--host", "127.0.0.1", "--port", "0", *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.flags, lines, self.port = flags, [], None
        deadline = time.time() + 300
        while self.port is None and time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"open http://127\.0\.0\.1:(\d+)/", line)
            self.port = int(match.group(1)) if match else None
        if self.port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(lines))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()     # drain its output

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(port: int, path: str, bodies: list[dict], clients: int, seconds: float, max_requests: int,
         timeout: float = 30.0) -> dict:
    """`clients` threads with keep-alive connections POST bodies back to back for `seconds` (or max_requests)."""
    lock, latencies, statuses, retry_after = threading.Lock(), [], {}, []
    stop_at = [0.0]
    sent = [0]

    def client(c: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        i = c
        while True:
            with lock:
                if time.perf_counter() >= stop_at[0] or sent[0] >= max_requests:
                    break
                sent[0] += 1
            body = json.dumps(bodies[i % len(bodies)]).encode()
            i += clients
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, {"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.status == 503:
                    retry_after.append(int(response.getheader("retry-after", "0")))
            except (OSError, http.client.HTTPException) as e:     # timeouts, resets: the failures we look for
                status = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            with lock:
                latencies.append((status, time.perf_counter() - start))
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    start = time.perf_counter()
    stop_at[0] = start + seconds
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    ok = np.array([s for st, s in latencies if st == "200"]) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": elapsed, "statuses": statuses,
            "rps": len(ok) / elapsed, "errors": len(latencies) - len(ok),
            "p50": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
            "p99": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
            "max": float(max((s for _, s in latencies), default=0) * 1000), "retry_after": retry_after,
            "rejected_ms": [s * 1000 for st, s in latencies if st == "503"]}


def mean_batch(server: Server, before: dict) -> float:
    after = server.get("/metrics")["batching"]["search"]
    batches = after["batches"] - before["batches"]
    return (after["items"] - before["items"]) / batches if batches else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 s a point instead of 10")
    p.add_argument("--n", type=int, default=100_000, help="index size [100000]")
    p.add_argument("--clients", default="1,8,32", help="client counts [1,8,32]")
    p.add_argument("--seconds", type=float, default=None, help="seconds a point [10, quick 3]")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="both servers' encoders [fp32]")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    counts = [int(c) for c in args.clients.split(",")]
    print(f"bench_serve: {os.cpu_count()} CPUs, shared with whatever else runs on this machine "
          f"(other agents' jobs here: numbers move from run to run; compare columns within one run)")
    results: dict = {"search": [], "generate": [], "overload": None}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        world = build(Path(tmp), args.n)
        extra = ("--precision", args.precision)
        servers = {"on": Server(world, *extra), "off": Server(world, "--no-batching", *extra)}
        try:
            texts = [{"text": t, "k": 10} for t in queries(4096, 0)]
            for server in servers.values():                                  # warm up both
                load(server.port, "/search", texts[:64], 4, 5.0, 64)
            for clients in counts:
                for mode, server in servers.items():
                    before, cpu = server.get("/metrics")["batching"]["search"], server.cpu_seconds()
                    r = load(server.port, "/search", texts, clients, seconds, max_requests=int(seconds * 3000))
                    cpu = server.cpu_seconds() - cpu
                    r.update(mode=mode, mean_batch=mean_batch(server, before), cpu_ms=1000 * cpu / max(r["requests"], 1))
                    results["search"].append(r)
            on = servers["on"]
            prompts = [{"text": t, "num_images": 1, "steps": 10, "seed": i} for i, t in enumerate(queries(64, 1))]
            for clients in (1, 4):
                r = load(on.port, "/generate", prompts, clients, seconds, max_requests=8 * clients, timeout=120)
                results["generate"].append(r)
            burst = load(on.port, "/generate", prompts, 16, seconds, max_requests=48, timeout=120)
            results["overload"] = burst
        finally:
            for server in servers.values():
                server.stop()
    report(results, world["kind"], args.n, seconds)
    if args.out:
        from clipkit.io import write_json
        write_json(args.out, results)
    return 0


def report(results: dict, kind: str, n: int, seconds: float) -> None:
    print(f"\nPOST /search text queries, {n:,}-item {kind} index, shapes-small text tower, k=10, {seconds:g} s a point")
    print(f"{'clients':>7} | {'batching':>8} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} | "
          f"{'mean batch':>10} | {'server CPU ms/req':>17}")
    rows = {(r["clients"], r["mode"]): r for r in results["search"]}
    for r in results["search"]:
        print(f"{r['clients']:>7} | {r['mode']:>8} | {r['rps']:7.1f} | {r['p50']:7.1f} | {r['p99']:7.1f} | "
              f"{r['errors']:>6} | {r['mean_batch']:10.1f} | {r['cpu_ms']:17.2f}")
    for clients in sorted({c for c, _ in rows}):
        on, off = rows[(clients, "on")], rows[(clients, "off")]
        print(f"  {clients} clients: batching on / off = {on['rps'] / off['rps']:.2f}x requests/s, "
              f"{off['cpu_ms'] / on['cpu_ms']:.2f}x less server CPU a request, p99 {on['p99']:.1f} vs {off['p99']:.1f} ms")
    print("\nPOST /generate (tiny untrained unCLIP on the same CLIP, 1 image, 10 ddim steps; 1 worker, 4 queue places)")
    for r in results["generate"]:
        print(f"  {r['clients']} clients: {r['requests']} requests, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
              f"errors {r['errors']}, statuses {r['statuses']}")
    b = results["overload"]
    rejected = b["rejected_ms"]
    print(f"\noverload: 16 clients at once on 1 worker + 4 queue places, {b['requests']} requests: statuses "
          f"{b['statuses']}; 503s answered in p50 {np.median(rejected) if rejected else float('nan'):.1f} ms, "
          f"max {max(rejected, default=float('nan')):.1f} ms, Retry-After {sorted(set(b['retry_after']))} s; "
          f"timeouts/resets: {sum(v for k, v in b['statuses'].items() if not k.isdigit())}")
    eight = rows.get((8, "on"))
    ratio = rows[(32, "on")]["rps"] / rows[(32, "off")]["rps"] if (32, "on") in rows else float("nan")
    errors = sum(r["errors"] for r in results["search"])
    print(f"\ngoals: zero search errors: {'yes' if errors == 0 else f'NO ({errors})'}; "
          f"p99 < 100 ms at 8 clients: {'yes' if eight and eight['p99'] < 100 else 'NO'} "
          f"({eight['p99']:.1f} ms)" if eight else "", end="")
    print(f"; batching >= 2x at 32 clients: {'yes' if ratio >= 2 else 'NO'} ({ratio:.2f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
