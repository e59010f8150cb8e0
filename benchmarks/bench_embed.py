"""Is the data path the bottleneck of embedding? encode_images fed from shards vs the bare forward.

Same model, same batch size, same number of images, one run:
  A. bare:   model.encode_image on a ready, preprocessed tensor (the ceiling)
  B. shards: webdataset shards -> decode PNG -> preprocess -> batch (DataLoader workers)
             -> ClipModel.encode_images (normalised, CPU float32 out)
Prints images/s of both and B/A (goal >= 0.9).

    python benchmarks/bench_embed.py [--model shapes-small] [--num 6000] [--batch-size 256] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import clipkit
from clipkit.data.shapes import write_split
from clipkit.data.shards import shard_loader, shard_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-small")
    p.add_argument("--num", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="best of N timed passes for each side")
    args = p.parse_args()

    torch.manual_seed(0)
    model = clipkit.create(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, "val", num=args.num, seed=0, shard_size=max(args.num // 4, 1))
        urls = os.path.join(tmp, "{00000..00003}.tar")

        def from_shards() -> int:
            pipeline, _ = shard_pipeline(urls, model.preprocess, None, batch_size=args.batch_size,
                                         fields=("image",))
            n = 0
            for (images,) in shard_loader(pipeline, num_workers=args.workers):
                n += len(model.encode_images(images, batch_size=args.batch_size))
            return n

        ready = torch.randn(args.batch_size, 3, model.image_size, model.image_size)
        n_batches = -(-args.num // args.batch_size)

        def bare() -> int:
            model.model.eval()
            with torch.inference_mode():
                for _ in range(n_batches):
                    model.model.encode_image(ready)
            return n_batches * args.batch_size

        bare()  # warm-up (allocator, kernels)
        results = {}
        for name, fn in (("bare forward", bare), ("from shards", from_shards)):
            best = 0.0
            for _ in range(args.repeats):
                start = time.perf_counter()
                n = fn()
                best = max(best, n / (time.perf_counter() - start))
            results[name] = best

    print(f"model {args.model}, batch {args.batch_size}, {args.num} images of "
          f"{model.image_size}px, {args.workers} loader worker(s), torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    for name, rate in results.items():
        print(f"  {name:>13}: {rate:8.0f} images/s")
    ratio = results["from shards"] / results["bare forward"]
    print(f"  ratio shards/bare: {ratio:.2f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
