"""Image-caption webdataset shards: writing them as img2dataset does, reading them robustly.

Layout (img2dataset's): DIR/00000.tar holding `{key}.png|jpg|webp`, `{key}.txt`
and optionally `{key}.json`, with DIR/00000_stats.json giving the counts
("successes") so the size of a dataset is known without reading the tars.

Reading never stops on a bad sample: a sample without an image, without a
caption, with an empty caption, or whose image does not decode is skipped and
counted per reason in a SkipCounter, which works across DataLoader workers.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image

from clipkit.images import to_rgb
from clipkit.io import atomic_file, write_json

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("no_image", "no_text", "empty_text", "bad_image", "bad_tar")
_MAX_WORKERS = 64


# ----------------------------------------------------------------------------- urls

def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Brace-expand a pattern ('data/{00000..00099}.tar'), '::'-separated lists, or a list of them."""
    import braceexpand

    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls).split("::")
    out = []
    for pattern in urls:
        out.extend(braceexpand.braceexpand(str(pattern)))
    if not out:
        raise ValueError(f"no shard urls in {urls!r}")
    return out


def _stats_path(url: str) -> Path | None:
    if "://" in url or url.startswith("pipe:"):
        return None
    path = Path(url)
    return path.with_name(path.name[: -len(".tar")] + "_stats.json") if path.name.endswith(".tar") else None


def count_samples(urls: str | Iterable[str]) -> int | None:
    """Total samples from img2dataset's `*_stats.json` files ("successes"), or None if any is missing."""
    total = 0
    for url in expand_urls(urls):
        stats = _stats_path(url)
        if stats is None or not stats.is_file():
            return None
        data = json.loads(stats.read_text())
        total += int(data.get("successes", data.get("count", 0)))
    return total


# ----------------------------------------------------------------------------- writing

def write_shards(samples: Iterable, out_dir: str | os.PathLike, shard_size: int = 10_000,
                 progress: bool = False, total: int | None = None) -> dict:
    """Write samples with `.key`, `.image` (PIL), `.caption` and `.metadata()` as img2dataset-style shards.

    Each tar is written under a temporary name and renamed when complete.
    Returns {"shards": [...], "count": n}.
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}; expected >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, count, shard_index = [], 0, 0
    iterator = iter(samples)
    bar = tqdm(total=total, disable=not progress, unit="samples", desc=f"write {out_dir.name}")
    exhausted = False
    while not exhausted:
        start = time.time()
        name = f"{shard_index:05d}"
        tar_path = out_dir / f"{name}.tar"
        in_shard = 0
        with atomic_file(tar_path, "wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
            for sample in iterator:
                buf = io.BytesIO()
                sample.image.save(buf, format="PNG")
                key = f"{shard_index:05d}{in_shard:04d}" if len(sample.key) == 0 else sample.key
                meta = {**sample.metadata(), "key": key}
                for ext, payload in (("png", buf.getvalue()), ("txt", sample.caption.encode()),
                                     ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
                in_shard += 1
                bar.update(1)
                if in_shard == shard_size:
                    break
            else:
                exhausted = True
        if in_shard == 0:
            tar_path.unlink()
            break
        write_json(out_dir / f"{name}_stats.json", {
            "count": in_shard, "successes": in_shard, "failed_to_download": 0, "failed_to_resize": 0,
            "duration": round(time.time() - start, 3), "status_dict": {"success": in_shard}})
        shards.append(str(tar_path))
        count += in_shard
        shard_index += 1
    bar.close()
    return {"shards": shards, "count": count}


# ----------------------------------------------------------------------------- reading

class SkipCounter:
    """Counts skipped samples per reason, in shared memory so DataLoader workers can add to it.

    Each worker writes its own row (no races); `summary()` sums the rows.
    """

    def __init__(self):
        self.counts = torch.zeros(_MAX_WORKERS + 1, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def add(self, reason: str, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else 1 + info.id % _MAX_WORKERS
        self.counts[row, SKIP_REASONS.index(reason)] += n

    def summary(self) -> dict[str, int]:
        totals = self.counts.sum(0).tolist()
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, totals)}

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def reset(self) -> None:
        self.counts.zero_()

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for unreadable tars / members: count and continue."""
        self.add("bad_tar")
        return True


def decode_samples(source: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
    """Raw tar members -> {"__key__", "image" (RGB PIL), "text" (str), "json" (dict or None)}; bad ones skipped."""
    for raw in source:
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if image_ext is None:
            counter.add("no_image")
            continue
        if "txt" not in raw:
            counter.add("no_text")
            continue
        try:
            text = raw["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            counter.add("empty_text")
            continue
        if not text:
            counter.add("empty_text")
            continue
        try:
            with Image.open(io.BytesIO(raw[image_ext])) as im:
                im.load()
                image = to_rgb(im)
        except Exception:  # PIL raises many types for corrupt data
            counter.add("bad_image")
            continue
        meta = None
        if "json" in raw:
            try:
                meta = json.loads(raw["json"])
            except ValueError:
                meta = None
        yield {"__key__": raw["__key__"], "image": image, "text": text, "json": meta}


def shard_pipeline(
    urls: str | Iterable[str],
    image_transform: Callable | None = None,
    tokenizer: Callable | None = None,
    batch_size: int | None = None,
    shuffle: int = 0,
    resampled: bool = False,
    seed: int = 0,
    counter: SkipCounter | None = None,
    fields: tuple[str, ...] = ("image", "text"),
    partial: bool = True,
    split_by_node: bool = True,
    epoch_batches: int | None = None,
):
    """A webdataset pipeline over image-caption shards.

    Yields tuples of `fields` (any of "image", "text", "__key__", "json"): the
    image passed through `image_transform`, the caption through `tokenizer`
    (one tensor row each) when given. Batched (stacked tensors, lists
    otherwise) when `batch_size` is set.

    Shards are split across processes (torch.distributed ranks) and DataLoader
    workers without duplicates, or drawn with replacement when `resampled`
    (then `epoch_batches` bounds an epoch). A worker without shards ends at
    once; nothing hangs. Returns (pipeline, counter).
    """
    import webdataset as wds

    shard_list = expand_urls(urls)
    counter = counter or SkipCounter()
    world = torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1
    if not resampled and split_by_node and world > 1 and len(shard_list) < world:
        raise ValueError(f"{len(shard_list)} shard(s) cannot be split across {world} processes without "
                         f"duplicates; write at least {world} shards or use resampled=True")
    for f in fields:
        if f not in ("image", "text", "__key__", "json"):
            raise ValueError(f"field {f!r} is not one of ('image', 'text', '__key__', 'json')")

    if resampled:
        stages = [wds.ResampledShards(shard_list, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(shard_list)]
        if shuffle:
            stages.append(wds.detshuffle(bufsize=len(shard_list), initial=len(shard_list), seed=seed))
        if split_by_node:
            stages.append(wds.split_by_node)
        stages.append(wds.split_by_worker)
    stages.append(wds.tarfile_to_samples(handler=counter.tar_handler))
    if shuffle:
        stages.append(wds.shuffle(bufsize=shuffle, initial=min(shuffle, 1000), seed=seed))  # seeded: resumable order
    stages.append(lambda src: decode_samples(src, counter))

    def transform(src):
        for s in src:
            if image_transform is not None:
                s["image"] = image_transform(s["image"])
            if tokenizer is not None:
                s["text"] = tokenizer([s["text"]])[0]
            yield tuple(s[f] for f in fields)

    stages.append(transform)
    if batch_size:
        stages.append(wds.batched(batch_size, partial=partial))
    pipeline = wds.DataPipeline(*stages)
    if epoch_batches:
        pipeline = pipeline.with_epoch(epoch_batches)
    return pipeline, counter


def _single_threaded_worker(_worker_id: int) -> None:
    # Decoding workers must not compete with the model's intra-op threads:
    # torch ops in a worker (ToTensor, Normalize) would otherwise spawn a full
    # thread pool per worker and oversubscribe the cores.
    torch.set_num_threads(1)


def shard_loader(pipeline, num_workers: int = 0, **kwargs):
    """A DataLoader over an already-batched pipeline (webdataset batches inside the workers)."""
    kwargs.setdefault("worker_init_fn", _single_threaded_worker)
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False, **kwargs)
