"""One CUDA GPU, one table: CLIP training against open_clip_train, unCLIP training, embedding, serving.

    python benchmarks/bench_gpu.py                      # on a machine with a CUDA GPU: under 8 minutes
    python benchmarks/bench_gpu.py --only clip serve    # some sections (clip, unclip, embed, serve)
    python benchmarks/bench_gpu.py --dry-run            # every section on CPU at toy size (tests run this)

Sections, each guarded (a failure prints its error in its row and the script goes on):
- CLIP training: ViT-B-32 at 224 px, bf16 autocast, batch 256, on shapes-world shards rendered
  at 224 px into a temporary folder (drawn with replacement by both trainers). clipkit's trainer
  (training/train_clip.py) vs open_clip_train, same model, data, batch, precision, steps and
  DataLoader workers, through benchmarks/bench_train.py: the two alternate over --rounds
  rounds (benchmarks/protocol.py); samples/s medians with their range, and the ratio of each round.
- unCLIP: decoder and prior training steps/s at the shapes recipes' widths (shapes-decoder at
  batch 64, shapes-prior at batch 256, bf16), on a fresh shapes-small CLIP and 32 px shards.
- Embedding: ClipModel.encode_images images/s for ViT-B-32 at 224 px, batch 256, fp32 vs bf16
  (interleaved rounds), the batch already on the GPU.
- Serve: `clipkit serve` on 127.0.0.1 over a 10,000-item index with a ViT-B-32 text tower:
  POST /search latency p50 / p99 over 200 requests on one kept-alive connection, and p50 over 50
  requests each on a new connection. Bounded in count and time; the server is stopped at the end.

Without a CUDA GPU it says so and exits 0 (a CPU measures nothing this script is about).
--dry-run forces the CPU (CUDA_VISIBLE_DEVICES="") and runs the same code at toy sizes
(shapes-tiny, 32 px, a few steps) so every path is exercised where no GPU is; its results go to
gpu-dry-run.json / .md, never over a real run's gpu.json / .md in benchmarks/results/.

torch and clipkit are imported inside main() and the sections, not at the top: --dry-run must
hide the GPU (CUDA_VISIBLE_DEVICES) before torch loads.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import bench_train
from bench_serve import Server

import protocol

NO_GPU = "no CUDA GPU here; bench_gpu.py measures nothing on CPU"
SECTIONS = ("clip", "unclip", "embed", "serve")
QUERIES = (
    "a red circle",
    "a small blue square wearing a hat",
    "a large green triangle",
    "a purple star",
    "an orange heart on the left",
    "a yellow hexagon",
    "a pink cross",
    "a brown diamond on the right",
)


@dataclass(frozen=True)
class Size:
    """Everything that differs between the real run and the dry run."""

    device: str = "cuda"
    threads: int | None = None  # intra-op threads per process (None: torch's default)
    rounds: int = 2
    # CLIP training (both trainers)
    clip_model: str = "ViT-B-32"
    image_size: int = 224
    clip_images: int = 2048  # rendered once, drawn with replacement
    clip_shards: int = 16
    clip_batch: int = 256
    clip_steps: int = 80
    clip_log_every: int = 20
    clip_workers: int = 10
    clip_precision: str = "amp_bf16"
    clip_timeout: float = 240.0  # seconds one training run may take
    # unCLIP training
    unclip_clip: str = "shapes-small"
    decoder_recipe: str = "shapes-decoder"
    prior_recipe: str = "shapes-prior"
    decoder_batch: int = 64
    prior_batch: int = 256
    unclip_images: int = 4096
    unclip_steps: int = 300
    unclip_log_every: int = 50
    unclip_precision: str = "bf16"
    # embedding
    embed_model: str = "ViT-B-32"
    embed_batch: int = 256
    embed_images: int = 2048
    embed_rounds: int = 3
    # serve
    serve_model: str = "ViT-B-32"
    serve_items: int = 10_000
    serve_requests: int = 200
    serve_new_connections: int = 50


GPU = Size()
DRY = replace(
    GPU,
    device="cpu",
    threads=1,
    rounds=1,
    clip_model="shapes-tiny",
    image_size=32,
    clip_images=128,
    clip_shards=2,
    clip_batch=16,
    clip_steps=6,
    clip_log_every=2,
    clip_workers=1,
    clip_timeout=120.0,
    unclip_clip="shapes-tiny",
    decoder_recipe="shapes-decoder-tiny",
    prior_recipe="shapes-prior-tiny",
    decoder_batch=16,
    prior_batch=32,
    unclip_images=96,
    unclip_steps=6,
    unclip_log_every=2,
    embed_model="shapes-tiny",
    embed_batch=32,
    embed_images=64,
    embed_rounds=1,
    serve_model="shapes-tiny",
    serve_items=500,
    serve_requests=20,
    serve_new_connections=5,
)


# ----------------------------------------------------------------------------- data


def _write_shard(job: tuple) -> None:
    """One shard of the shapes world (a process-pool job: rendering at 224 px is CPU work)."""
    from clipkit.shapes.world import write_split  # here: the pool's workers import only what they use

    folder, index, num, image_size = job
    part = Path(folder) / f"part-{index}"
    write_split(part, "train", num=num, seed=index, shard_size=num, image_size=image_size)
    for name in ("00000.tar", "00000_stats.json"):
        os.replace(part / name, Path(folder) / name.replace("00000", f"{index:05d}"))
    shutil.rmtree(part)


def write_shards(folder: Path, images: int, shards: int, image_size: int) -> str:
    """`images` shapes-world samples at `image_size` px in `shards` shards; returns their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), i, images // shards, image_size) for i in range(shards)]
    workers = min(shards, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_shard, jobs))
    else:
        for job in jobs:
            _write_shard(job)
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


# ----------------------------------------------------------------------------- sections


def clip_training(size: Size, work: Path, rounds: int) -> list[list]:
    section = f"CLIP training: {size.clip_model} {size.image_size} px, {size.clip_precision}, batch {size.clip_batch}"
    data = write_shards(work / "clip-data", size.clip_images, size.clip_shards, size.image_size)
    args = argparse.Namespace(
        model=size.clip_model,
        data=data,
        batch=size.clip_batch,
        precision=size.clip_precision,
        steps=size.clip_steps,
        log_every=size.clip_log_every,
        workers=size.clip_workers,
        threads=size.threads,
        resampled=True,
        timeout=size.clip_timeout,
        rounds=rounds,
        strict=False,
        only="both",
    )
    runs = bench_train.compare(args, 1, work / "clip-runs")
    summary = runs.summary("samples_per_s")
    g = next((m["gflop_per_sample"] for _, _, m, _ in runs.runs if m.get("gflop_per_sample")), None)
    rows = []
    for name, cell, spread, clean in protocol.contender_rows(runs, "samples_per_s"):
        note = f"median (range) {cell}, spread {spread}, clean rounds {clean}; {size.clip_steps} steps a run"
        if g:
            note += f"; {g * summary[name]['median']:.4g} GFLOP/s of model FLOPs ({g:.3g} GFLOP a sample)"
        rows.append([section, name, summary[name]["median"], "samples/s", note])
    ratio = runs.ratio("samples_per_s", "clipkit", "open_clip_train")
    rows.append(
        [
            section,
            "ratio clipkit / open_clip_train",
            ratio["median"],
            "x",
            f"per round: {protocol.median_range(ratio, 'x')}, clean rounds {protocol.clean_rounds(ratio, rounds)}",
        ]
    )
    return rows


def _windows_rate(run: Path) -> float:
    """Median samples/s of a clipkit run's metrics.jsonl windows after the first (warm-up)."""
    rates = [
        json.loads(x)["samples_per_s"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if '"samples_per_s"' in x
    ]
    return statistics.median(rates[1:] or rates)


def unclip_training(size: Size, work: Path, rounds: int) -> list[list]:
    import clipkit  # here: after main() settled CUDA_VISIBLE_DEVICES
    from clipkit.config import load_config
    from clipkit.shapes import config_path
    from clipkit.train.config import DecoderTrainConfig, PriorTrainConfig
    from clipkit.train.unclip import train_decoder, train_prior

    clip_dir = work / "unclip-clip"
    clipkit.create(size.unclip_clip, seed=0).save(clip_dir)
    data = write_shards(work / "unclip-data", size.unclip_images, max(1, size.unclip_images // 1024), 32)
    rows = []
    for kind, recipe, cls, train, batch in (
        ("decoder", size.decoder_recipe, DecoderTrainConfig, train_decoder, size.decoder_batch),
        ("prior", size.prior_recipe, PriorTrainConfig, train_prior, size.prior_batch),
    ):
        section = f"unCLIP {kind} training: {recipe} widths, batch {batch}, {size.unclip_precision}"
        try:
            out = work / f"unclip-{kind}"
            config = load_config(
                cls,
                config_path(recipe),
                {
                    "clip": str(clip_dir),
                    "train_data": data,
                    "out_dir": str(out),
                    "pipeline_dir": str(work / "unclip"),
                    "num_samples": size.unclip_images,
                    "val_samples": 32,
                    "batch_size": batch,
                    "max_steps": size.unclip_steps,
                    "log_every": size.unclip_log_every,
                    "checkpoint_every": None,
                    "mixed_precision": size.unclip_precision,
                    "progress": False,
                    "num_threads": size.threads,
                },
            )
            summary = train(config)
            rate = _windows_rate(out)
            rows.append(
                [
                    section,
                    "steps/s",
                    rate / batch,
                    "steps/s",
                    f"{rate:.0f} samples/s; windows of {size.unclip_log_every} steps after the first, median; "
                    f"{size.unclip_steps} steps, {summary['params'] / 1e6:.1f}M parameters",
                ]
            )
        except Exception as e:  # one model's failure leaves the other's row
            rows.append(_error_row(section, e))
    return rows


def embedding(size: Size, work: Path, rounds: int) -> list[list]:
    import torch  # here: after main() settled CUDA_VISIBLE_DEVICES

    import clipkit

    section = f"embedding: {size.embed_model} {size.image_size} px, batch {size.embed_batch}"
    model = clipkit.create(size.embed_model, device=size.device, seed=0)
    images = torch.randn(size.embed_images, 3, model.image_size, model.image_size, device=size.device)

    def run(precision: str) -> dict:
        start = time.perf_counter()
        out = model.encode_images(images, batch_size=size.embed_batch, precision=precision)  # returns on the CPU
        return {"images_per_s": len(out) / (time.perf_counter() - start)}

    for precision in ("fp32", "bf16"):
        run(precision)  # warm-up: kernels, autotuning, allocator
    runs = protocol.interleave(
        {p: (lambda p=p: run(p)) for p in ("fp32", "bf16")}, rounds=max(rounds, size.embed_rounds)
    )
    summary = runs.summary("images_per_s")
    rows = [
        [
            section,
            f"encode_images {p}",
            summary[p]["median"],
            "images/s",
            f"median (range) {cell}, spread {spread}, clean rounds {clean}; {size.embed_images} images already on "
            f"the {size.device}, embeddings returned on the CPU",
        ]
        for p, cell, spread, clean in protocol.contender_rows(runs, "images_per_s")
    ]
    ratio = runs.ratio("images_per_s", "bf16", "fp32")
    rows.append(
        [
            section,
            "ratio bf16 / fp32",
            ratio["median"],
            "x",
            f"per round: {protocol.median_range(ratio, 'x')}, "
            f"clean rounds {protocol.clean_rounds(ratio, max(rounds, size.embed_rounds))}",
        ]
    )
    return rows


def _search(conn: http.client.HTTPConnection, text: str) -> float:
    """One POST /search on `conn`; milliseconds until the whole answer was read."""
    body = json.dumps({"text": text, "k": 10}).encode()
    start = time.perf_counter()
    conn.request("POST", "/search", body, {"content-type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST /search answered {response.status}: {payload[:200]!r}")
    return 1000 * (time.perf_counter() - start)


def serve_latency(size: Size, work: Path, rounds: int, deadline_s: float = 120.0) -> list[list]:
    import numpy as np  # here: after main() settled CUDA_VISIBLE_DEVICES

    import clipkit

    section = f"serve: POST /search, {size.serve_items:,}-item index, {size.serve_model} text tower"
    model = clipkit.create(size.serve_model, seed=0)
    model.save(work / "serve-model")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((size.serve_items, model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = clipkit.EmbeddingIndex.build(vectors, kind="auto", model=model)
    index.save(work / "serve-index")
    server = Server(work / "serve-index", work / "serve-model")
    try:
        stop_at = time.perf_counter() + deadline_s
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for i in range(10):  # warm-up: first forward passes, connection
            _search(conn, QUERIES[i % len(QUERIES)])
        kept = []
        for i in range(size.serve_requests):
            if time.perf_counter() > stop_at:
                break
            kept.append(_search(conn, f"{QUERIES[i % len(QUERIES)]} number {i}"))
        conn.close()
        fresh = []
        for i in range(size.serve_new_connections):
            if time.perf_counter() > stop_at:
                break
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            fresh.append(_search(conn, f"{QUERIES[i % len(QUERIES)]} fresh {i}"))
            conn.close()
    finally:
        server.stop()
    return [
        [
            section,
            "p50, one kept-alive connection",
            float(np.percentile(kept, 50)),
            "ms",
            f"{len(kept)} requests back to back, k=10",
        ],
        [section, "p99, one kept-alive connection", float(np.percentile(kept, 99)), "ms", f"{len(kept)} requests"],
        [section, "p50, a new connection a request", float(np.percentile(fresh, 50)), "ms", f"{len(fresh)} requests"],
    ]


SECTION_FUNCTIONS = {"clip": clip_training, "unclip": unclip_training, "embed": embedding, "serve": serve_latency}
SECTION_TITLES = {"clip": "CLIP training", "unclip": "unCLIP training", "embed": "embedding", "serve": "serve"}


def _error_row(section: str, error: BaseException) -> list:
    traceback.print_exception(error, file=sys.stderr)
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    first = lines[0].strip() if lines else ""
    message = first if first == last else f"{first} ... {last}"
    return [section, "error", "error", "", f"{type(error).__name__}: {message[:300]}".replace("|", "/")]


def run_sections(size: Size, sections: list[str], rounds: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for name in sections:
            start = time.perf_counter()
            print(f"[bench_gpu] {SECTION_TITLES[name]} ...", flush=True)
            try:
                got = SECTION_FUNCTIONS[name](size, Path(tmp) / name, rounds)
            except (Exception, SystemExit) as e:  # guarded: the error goes in the row, the rest runs
                got = [_error_row(SECTION_TITLES[name], e)]
            print(f"[bench_gpu] {SECTION_TITLES[name]}: {time.perf_counter() - start:.0f} s", flush=True)
            rows += got
    return rows


def device_line(size: Size) -> str:
    import torch  # here: after main() settled CUDA_VISIBLE_DEVICES

    if size.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return (
            f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPU cores"
        )
    return f"CPU only (dry run), {os.cpu_count()} cores, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--dry-run", action="store_true", help="every section on CPU at toy size (seconds, not a measure)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run [all]")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the CLIP comparison [2; dry run 1]")
    p.add_argument("--results-dir", default=str(protocol.RESULTS), help="where NAME.json / .md go [benchmarks/results]")
    args = p.parse_args(argv)
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: this process and its children see no GPU
    import torch  # here: after CUDA_VISIBLE_DEVICES is settled

    size = DRY if args.dry_run else GPU
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    if size.threads:
        torch.set_num_threads(size.threads)
    rounds = args.rounds or size.rounds
    started = time.perf_counter()
    rows = run_sections(size, args.only, rounds)
    total = time.perf_counter() - started
    caption = (
        f"**clipkit on {'a GPU' if size.device == 'cuda' else 'the CPU, toy sizes (dry run: not a measure)'}"
        f"** — {device_line(size)}; the whole script took {total:.0f} s. CLIP training: both trainers draw the "
        f"same {size.clip_images} shapes-world images ({size.image_size} px, {size.clip_shards} webdataset shards) "
        f"with replacement, {size.clip_workers} DataLoader worker(s) each, first {size.clip_log_every}-step window "
        f"excluded as warm-up, alternating over {rounds} round(s) (benchmarks/protocol.py); value = the median "
        f"over rounds. A section that failed says why in its row.\n\n"
    )
    table = caption + protocol.markdown_table(["section", "measure", "value", "unit", "how"], rows)
    print("\n" + table)
    results = {
        "dry_run": args.dry_run,
        "device": device_line(size),
        "seconds": round(total, 1),
        "rounds": rounds,
        "size": asdict(size),
        "rows": [dict(zip(("section", "measure", "value", "unit", "how"), row)) for row in rows],
    }
    path = protocol.write_results(
        "gpu-dry-run" if args.dry_run else "gpu", results, table, results_dir=args.results_dir
    )
    print(f"written: {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
