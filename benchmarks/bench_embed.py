"""Embedding throughput: is the data path the bottleneck, and do 2 processes beat 1? Interleaved rounds.

A. Per model, same batch size, same number of images:
  bare:   model.encode_image on a ready, preprocessed tensor (the ceiling)
  shards: webdataset shards -> decode PNG -> preprocess -> batch (DataLoader workers)
          -> ClipModel.encode_images (normalised, CPU float32 out)
images/s of both and shards / bare (goal >= 0.9).

Read the ratio with the model's cost in mind: decoding a shard sample costs a
fixed ~0.4 ms of CPU here, so a model whose forward costs less than that per
image (shapes-small: ~0.3 ms) shares the cores with the decoder, while a real
model (ViT-B-32 at 224 px) hides it entirely.

B. On the same shards, `clipkit embed` as 1 process x 2 threads vs
`torchrun --nproc_per_node 2 -m clipkit embed` as 2 processes x 1 thread (gloo
ranks split the shards): images/s of the embedding phase (the manifest's
embed_seconds, start-up excluded) and end to end, and the ratio (goal >= 1.7x
with a model whose forward dominates: ViT-B-32 at 224 px by default). The two
outputs are checked to hold the same rows.

Every comparison alternates its contenders (A B, B A, ...) for --rounds rounds through
benchmarks/protocol.py; medians with their range, per-round ratios; windows in which
other processes took CPU are marked and left out (--strict stops instead). The tables
are printed and written to benchmarks/results/embed.json / .md.

    python benchmarks/bench_embed.py [--models shapes-small ViT-B-32] [--num 6000] [--batch-size 256] [--workers 1]
    python benchmarks/bench_embed.py --skip-data-path --processes-num 256      # only 1 vs 2 processes, quick
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
import torch

import clipkit
from clipkit.data.shards import shard_loader, shard_pipeline
from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.shapes.world import write_split

import protocol


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shapes-small", "ViT-B-32"])
    p.add_argument("--num", type=int, default=6000, help="images for the first model")
    p.add_argument("--num-large", type=int, default=512, help="images for the other models (slower forward)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--processes-model", default="ViT-B-32", help="model of the 1 vs 2 processes comparison")
    p.add_argument("--processes-num", type=int, default=1024, help="images of the 1 vs 2 processes comparison")
    p.add_argument("--skip-data-path", action="store_true", help="only the 1 vs 2 processes comparison")
    p.add_argument("--skip-processes", action="store_true", help="only the data-path comparison")
    protocol.add_arguments(p)
    args = p.parse_args()
    results, tables = {}, []
    if not args.skip_data_path:
        results["data_path"], table = data_path(args)
        tables.append(table)
    if not args.skip_processes:
        results["processes"], table = compare_processes(
            args, args.processes_model, args.processes_num, min(args.batch_size, 64)
        )
        tables.append(table)
    text = "\n".join(tables)
    print("\n" + text)
    path = protocol.write_results("embed", {"args": vars(args), **results}, text)
    print(f"written: {path} and {path.with_suffix('.md')}")


def data_path(args) -> tuple[dict, str]:
    """Part A for every model: bare forward vs encode_images fed from shards, interleaved."""
    rows, data = [], {}
    for i, name in enumerate(args.models):
        num = args.num if i == 0 else args.num_large
        runs = measure(name, num, args)
        ratio = runs.ratio("images_per_s", "from shards", "bare forward")
        for row in protocol.contender_rows(runs, "images_per_s"):
            rows.append([name, num, *row])
        rows.append(
            [
                name,
                num,
                "**shards / bare** (goal >= 0.9)",
                protocol.median_range(ratio, "x"),
                "",
                protocol.clean_rounds(ratio, args.rounds),
            ]
        )
        data[name] = {
            "images": num,
            "summary": runs.summary("images_per_s"),
            "ratio_shards_over_bare": ratio,
            "contended_windows": runs.contended_windows(),
        }
    caption = (
        f"**Embedding: the data path against the bare forward** — `encode_images` fed from webdataset "
        f"shards (decode PNG, preprocess, {args.workers} DataLoader worker(s)) vs `model.encode_image` on a "
        f"ready tensor; batch {args.batch_size}, torch threads {torch.get_num_threads()}, CPU. images/s: "
        f"median over {args.rounds} interleaved round(s) with its range; spread = (max - min) / median; "
        f"the ratio pairs the two runs of each round.\n\n"
    )
    headers = ["model", "images", "path", "images/s: median (range)", "spread", "clean rounds"]
    return data, caption + protocol.markdown_table(headers, rows)


def measure(name: str, num: int, args) -> protocol.Interleaved:
    torch.manual_seed(0)
    model = clipkit.create(name, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, "val", num=num, seed=0, shard_size=max(num // 4, 1))
        urls = os.path.join(tmp, "{00000..00003}.tar")

        def from_shards() -> dict:
            start = time.perf_counter()
            pipeline, _ = shard_pipeline(urls, model.preprocess, None, batch_size=args.batch_size, fields=("image",))
            n = 0
            for (images,) in shard_loader(pipeline, num_workers=args.workers):
                n += len(model.encode_images(images, batch_size=args.batch_size))
            return {"images_per_s": n / (time.perf_counter() - start)}

        ready = torch.randn(args.batch_size, 3, model.image_size, model.image_size)
        n_batches = -(-num // args.batch_size)

        def bare() -> dict:
            start = time.perf_counter()
            model.model.eval()
            with torch.inference_mode():
                for _ in range(n_batches):
                    model.model.encode_image(ready)
            return {"images_per_s": n_batches * args.batch_size / (time.perf_counter() - start)}

        bare()  # warm-up (allocator, kernels)
        return protocol.interleave(
            {"bare forward": bare, "from shards": from_shards},
            rounds=args.rounds,
            strict=args.strict,
            log=lambda line: print(f"{name}: {line}"),
        )


def compare_processes(args, model: str, num: int, batch_size: int) -> tuple[dict, str]:
    """`clipkit embed` as 1 process x 2 threads vs torchrun 2 processes x 1 thread, same shards, same rows."""
    bin_dir = os.path.dirname(sys.executable)
    launchers = {
        "1 process x 2 threads": ([sys.executable], "2"),
        "2 processes x 1 thread": ([os.path.join(bin_dir, "torchrun"), "--standalone", "--nproc_per_node", "2"], "1"),
    }
    outputs: dict[str, list[str]] = {label: [] for label in launchers}
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, "val", num=num, seed=0, shard_size=max(num // 4, 1))
        shards = os.path.join(tmp, "{00000..00003}.tar")
        common = [
            "-m",
            "clipkit",
            "embed",
            "--model",
            model,
            "--shards",
            shards,
            "--batch-size",
            str(batch_size),
            "--no-captions",
        ]

        def run(label: str) -> dict:
            launcher, threads = launchers[label]
            out = os.path.join(tmp, f"{label.replace(' ', '_')}-{len(outputs[label])}")
            start = time.perf_counter()
            done = subprocess.run(
                [*launcher, *common, "--out", out],
                env={**os.environ, "OMP_NUM_THREADS": threads},
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            if done.returncode:
                raise SystemExit(f"{label} failed:\n{done.stderr[-2000:]}")
            outputs[label].append(out)
            manifest = json.loads(Path(out, "manifest.json").read_text())
            return {
                "images": manifest["count"],
                "images_per_s": manifest["count"] / manifest["embed_seconds"],
                "images_per_s_wall": manifest["count"] / wall,
            }

        runs = protocol.interleave(
            {label: (lambda label=label: run(label)) for label in launchers}, rounds=args.rounds, strict=args.strict
        )
        one, two = (outputs[label][0] for label in launchers)
        same = EmbeddingFolder(one).metadata(["key"]) == EmbeddingFolder(two).metadata(["key"]) and np.allclose(
            EmbeddingFolder(one).load("img"), EmbeddingFolder(two).load("img"), atol=1e-4
        )
    a, b = launchers
    ratio, ratio_wall = runs.ratio("images_per_s", b, a), runs.ratio("images_per_s_wall", b, a)
    wall = runs.summary("images_per_s_wall")
    rows = [[*row, protocol.median_range(wall.get(row[0]))] for row in protocol.contender_rows(runs, "images_per_s")]
    rows.append(
        [
            "**2 processes / 1** (goal >= 1.7x)",
            protocol.median_range(ratio, "x"),
            "",
            protocol.clean_rounds(ratio, args.rounds),
            protocol.median_range(ratio_wall, "x"),
        ]
    )
    caption = (
        f"**`clipkit embed`: 1 process x 2 threads vs 2 processes x 1 thread (torchrun, gloo)** — model "
        f"`{model}`, {num} images in 4 shards, batch {batch_size}, no captions; both outputs hold the same "
        f"rows: {same}. images/s of the embedding phase (the manifest's embed_seconds, start-up excluded) "
        f"and end to end (wall clock); medians over {args.rounds} interleaved round(s) with their range.\n\n"
    )
    headers = [
        "run",
        "images/s, embedding phase: median (range)",
        "spread",
        "clean rounds",
        "images/s end to end: median (range)",
    ]
    data = {
        "model": model,
        "images": num,
        "batch_size": batch_size,
        "same_rows": bool(same),
        "summary": runs.summary("images_per_s"),
        "summary_wall": wall,
        "ratio_2_over_1": ratio,
        "ratio_2_over_1_wall": ratio_wall,
        "contended_windows": runs.contended_windows(),
    }
    return data, caption + protocol.markdown_table(headers, rows)


if __name__ == "__main__":
    main()
