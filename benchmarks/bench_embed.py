"""Embedding throughput: is the data path the bottleneck, and do 2 processes beat 1?

Same model, same batch size, same number of images, one run:
  A. bare:   model.encode_image on a ready, preprocessed tensor (the ceiling)
  B. shards: webdataset shards -> decode PNG -> preprocess -> batch (DataLoader workers)
             -> ClipModel.encode_images (normalised, CPU float32 out)
Prints images/s of both and B/A (goal >= 0.9) for each model named.

Read the ratio with the model's cost in mind: decoding a shard sample costs a
fixed ~0.4 ms of CPU here, so a model whose forward costs less than that per
image (shapes-small: ~0.3 ms) shares the cores with the decoder, while a real
model (ViT-B-32 at 224 px) hides it entirely.

Then, on the same shards, `clipkit embed` as 1 process x 2 threads vs
`torchrun --nproc_per_node 2 -m clipkit embed` as 2 processes x 1 thread (gloo
ranks split the shards): images/s of the embedding phase (the manifest's
embed_seconds, start-up excluded) and end to end, and the ratio (goal >= 1.7x
with a model whose forward dominates: ViT-B-32 at 224 px by default). The two
outputs are checked to hold the same rows.

    python benchmarks/bench_embed.py [--models shapes-small ViT-B-32] [--num 6000] [--batch-size 256] [--workers 1]
    python benchmarks/bench_embed.py --skip-data-path --processes-num 256      # only 1 vs 2 processes, quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import clipkit
from clipkit.shapes.world import write_split
from clipkit.data.shards import shard_loader, shard_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shapes-small", "ViT-B-32"])
    p.add_argument("--num", type=int, default=6000, help="images for the first model")
    p.add_argument("--num-large", type=int, default=512, help="images for the other models (slower forward)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="best of N timed passes for each side")
    p.add_argument("--processes-model", default="ViT-B-32", help="model of the 1 vs 2 processes comparison")
    p.add_argument("--processes-num", type=int, default=1024, help="images of the 1 vs 2 processes comparison")
    p.add_argument("--skip-data-path", action="store_true", help="only the 1 vs 2 processes comparison")
    p.add_argument("--skip-processes", action="store_true", help="only the data-path comparison")
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()} (the machine is shared: read ratios, not absolute numbers)")
    if not args.skip_processes:
        compare_processes(args.processes_model, args.processes_num, min(args.batch_size, 64))
    if args.skip_data_path:
        return
    rows = [measure(name, args.num if i == 0 else args.num_large, args) for i, name in enumerate(args.models)]
    print(f"encode_images fed from shards vs the bare forward on ready tensors; batch {args.batch_size}, "
          f"{args.workers} loader worker(s), torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"  {'model':<14}{'images':>8}{'bare img/s':>12}{'shards img/s':>14}{'ratio':>8}")
    for r in rows:
        print(f"  {r['model']:<14}{r['images']:>8}{r['bare']:>12.0f}{r['shards']:>14.0f}{r['ratio']:>8.2f}")
    print("  (goal: ratio >= 0.9)")


def compare_processes(model: str, num: int, batch_size: int) -> None:
    """`clipkit embed` as 1 process x 2 threads vs torchrun 2 processes x 1 thread, same shards, same rows."""
    import json
    import subprocess
    import sys

    import numpy as np

    bin_dir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, "val", num=num, seed=0, shard_size=max(num // 4, 1))
        shards = os.path.join(tmp, "{00000..00003}.tar")
        common = ["-m", "clipkit", "embed", "--model", model, "--shards", shards, "--batch-size", str(batch_size),
                  "--no-captions"]
        runs = {"1 process x 2 threads": ([sys.executable], "2"),
                "2 processes x 1 thread": ([os.path.join(bin_dir, "torchrun"), "--standalone",
                                            "--nproc_per_node", "2"], "1")}
        results = {}
        for label, (launcher, threads) in runs.items():
            out = os.path.join(tmp, label.replace(" ", "_"))
            env = {**os.environ, "OMP_NUM_THREADS": threads}
            start = time.perf_counter()
            done = subprocess.run([*launcher, *common, "--out", out], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                raise SystemExit(f"{label} failed:\n{done.stderr[-2000:]}")
            manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
            results[label] = (manifest["count"], manifest["embed_seconds"], wall, out)
        (n1, e1, w1, o1), (n2, e2, w2, o2) = results.values()
        from clipkit.embeddings import EmbeddingFolder

        same = (EmbeddingFolder(o1).metadata(["key"]) == EmbeddingFolder(o2).metadata(["key"])
                and np.allclose(EmbeddingFolder(o1).load("img"), EmbeddingFolder(o2).load("img"), atol=1e-4))
    print(f"\n`clipkit embed` {model}, {num} images in 4 shards, batch {batch_size}, no captions; same rows: {same}")
    print(f"  {'run':<26}{'images':>8}{'embed s':>10}{'img/s':>9}{'wall s':>9}{'img/s wall':>12}")
    for label, (n, e, w, _) in results.items():
        print(f"  {label:<26}{n:>8}{e:>10.1f}{n / e:>9.1f}{w:>9.1f}{n / w:>12.1f}")
    print(f"  ratio 2 processes / 1: {(n2 / e2) / (n1 / e1):.2f}x embedding phase, {(n2 / w2) / (n1 / w1):.2f}x end to "
          f"end (goal >= 1.7x); load average after: {os.getloadavg()}")


def measure(name: str, num: int, args) -> dict:
    torch.manual_seed(0)
    model = clipkit.create(name, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, "val", num=num, seed=0, shard_size=max(num // 4, 1))
        urls = os.path.join(tmp, "{00000..00003}.tar")

        def from_shards() -> int:
            pipeline, _ = shard_pipeline(urls, model.preprocess, None, batch_size=args.batch_size,
                                         fields=("image",))
            n = 0
            for (images,) in shard_loader(pipeline, num_workers=args.workers):
                n += len(model.encode_images(images, batch_size=args.batch_size))
            return n

        ready = torch.randn(args.batch_size, 3, model.image_size, model.image_size)
        n_batches = -(-num // args.batch_size)

        def bare() -> int:
            model.model.eval()
            with torch.inference_mode():
                for _ in range(n_batches):
                    model.model.encode_image(ready)
            return n_batches * args.batch_size

        bare()  # warm-up (allocator, kernels)
        results = {}
        for label, fn in (("bare forward", bare), ("from shards", from_shards)):
            best = 0.0
            for _ in range(args.repeats):
                start = time.perf_counter()
                n = fn()
                best = max(best, n / (time.perf_counter() - start))
            results[label] = best
    return {"model": name, "images": num, "bare": results["bare forward"], "shards": results["from shards"],
            "ratio": results["from shards"] / results["bare forward"]}


if __name__ == "__main__":
    main()
