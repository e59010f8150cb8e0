"""The shapes world as CLIP_benchmark datasets: one zero-shot classification dataset per attribute.

    from clipkit.shapes.benchmark import export_shapes_benchmark
    paths = export_shapes_benchmark("bench", split="val", num=1000, seed=1)
    # {"shapes_shape": "bench/shapes_shape", ..., "shapes_hat": ..., "shapes_captions": ...}
    # clipkit eval --model M --dataset bench/shapes_color --task zeroshot
    # clip_benchmark eval --dataset wds/shapes_color --dataset_root bench/shapes_color --model local-dir:M ...

Each attribute's class names are the short prompts of
clipkit.shapes.world.attribute_prompts ("a photo of a circle", ...) with the
template "{c}", so zero-shot accuracy on these datasets is exactly the
per-attribute accuracy of clipkit.shapes.evaluate. Every sample also
keeps its caption in `txt`, and `shapes_captions` is the same images as a
retrieval dataset. `where` keeps only samples whose attributes pass it (a
slice of the world, e.g. `lambda a: a.color in ("red", "blue")`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from clipkit.evaluation import export_clip_benchmark
from clipkit.shapes import world as shapes


def slice_samples(split: str, num: int, seed: int, where: Callable | None = None, image_size: int = 32) -> list:
    """`num` shapes samples of `split` whose attributes pass `where` (all when None), deterministic."""
    if where is None:
        return list(shapes.generate(split, num, seed, image_size))
    out = []
    for sample in shapes.generate(split, num * 50, seed, image_size):
        if where(sample.attributes):
            out.append(sample)
            if len(out) == num:
                return out
    raise ValueError(f"only {len(out)} of {num * 50} {split!r} samples pass `where`; widen the slice or lower num")


def export_shapes_benchmark(
    out_dir: str | os.PathLike,
    split: str = "val",
    num: int = 1000,
    seed: int = 1,
    attributes=shapes.ATTRIBUTES,
    where: Callable | None = None,
    prefix: str = "shapes_",
    retrieval: bool = True,
    train_num: int = 0,
    train_seed: int = 0,
) -> dict[str, str]:
    """Write one CLIP_benchmark dataset per attribute (+ a retrieval one) under `out_dir`; returns name -> path.

    `train_num` > 0 also writes a `train` split (from the world's train split) for linear probes.
    """

    for attribute in attributes:
        if attribute not in shapes.ATTRIBUTES:
            raise ValueError(f"attribute {attribute!r} is not one of {shapes.ATTRIBUTES}")
    splits = {"test": slice_samples(split, num, seed, where)}
    if train_num:
        splits["train"] = slice_samples("train", train_num, train_seed, where)
    out_dir = Path(out_dir)
    paths = {}
    for attribute in attributes:
        name = f"{prefix}{attribute}"
        for split_name, samples in splits.items():
            export_clip_benchmark(
                ((s.image, shapes.attribute_label(s.attributes, attribute), [s.caption]) for s in samples),
                out_dir / name,
                classnames=shapes.attribute_prompts(attribute),
                templates=["{c}"],
                split=split_name,
            )
        paths[name] = str(out_dir / name)
    if retrieval:
        name = f"{prefix}captions"
        export_clip_benchmark(
            ((s.image, None, [s.caption]) for s in splits["test"]), out_dir / name, dataset_type="retrieval"
        )
        paths[name] = str(out_dir / name)
    return paths
