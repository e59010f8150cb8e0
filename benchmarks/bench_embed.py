"""Is the data path the bottleneck of embedding? encode_images fed from shards vs the bare forward.

Same model, same batch size, same number of images, one run:
  A. bare:   model.encode_image on a ready, preprocessed tensor (the ceiling)
  B. shards: webdataset shards -> decode PNG -> preprocess -> batch (DataLoader workers)
             -> ClipModel.encode_images (normalised, CPU float32 out)
Prints images/s of both and B/A (goal >= 0.9) for each model named.

Read the ratio with the model's cost in mind: decoding a shard sample costs a
fixed ~0.4 ms of CPU here, so a model whose forward costs less than that per
image (shapes-small: ~0.3 ms) shares the cores with the decoder, while a real
model (ViT-B-32 at 224 px) hides it entirely.

    python benchmarks/bench_embed.py [--models shapes-small ViT-B-32] [--num 6000] [--batch-size 256] [--workers 1]
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
    p.add_argument("--models", nargs="+", default=["shapes-small", "ViT-B-32"])
    p.add_argument("--num", type=int, default=6000, help="images for the first model")
    p.add_argument("--num-large", type=int, default=512, help="images for the other models (slower forward)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="best of N timed passes for each side")
    args = p.parse_args()

    rows = [measure(name, args.num if i == 0 else args.num_large, args) for i, name in enumerate(args.models)]
    print(f"encode_images fed from shards vs the bare forward on ready tensors; batch {args.batch_size}, "
          f"{args.workers} loader worker(s), torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"  {'model':<14}{'images':>8}{'bare img/s':>12}{'shards img/s':>14}{'ratio':>8}")
    for r in rows:
        print(f"  {r['model']:<14}{r['images']:>8}{r['bare']:>12.0f}{r['shards']:>14.0f}{r['ratio']:>8.2f}")
    print("  (goal: ratio >= 0.9)")


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
