"""Image-caption webdataset shards: writing them as img2dataset does, reading them robustly.

Layout (img2dataset's): DIR/00000.tar holding `{key}.png|jpg|webp`, `{key}.txt`
and optionally `{key}.json`, with DIR/00000_stats.json giving the counts
("successes") so the size of a dataset is known without reading the tars.

Reading never stops on a bad sample: a sample without an image, without a
caption, with an empty caption, or whose image does not decode is skipped and
counted per reason in a SkipCounter, which works across DataLoader workers.
Lost samples are counted too: a tar that cannot be read (`bad_tar`) or that ends
before tar's end-of-archive blocks (`truncated`: a kill, a full disk, a partial
copy; Python's tarfile takes that for a normal end) counts the samples its
`_stats.json` promised and did not deliver (1 without a stats file).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from zlib import error as zlib_error

import torch
from PIL import Image

from clipkit.images import to_rgb
from clipkit.io import atomic_file, read_json, write_json

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("no_image", "no_text", "empty_text", "bad_image", "bad_tar", "truncated")
_MAX_WORKERS = 64


# ----------------------------------------------------------------------------- urls


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Brace-expand a pattern ('data/{00000..00099}.tar'), a folder of .tar files, '::'-separated lists,
    or a list of them."""
    import braceexpand

    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls).split("::")
    out = []
    for pattern in urls:
        if os.path.isdir(pattern):  # a folder of shards: its .tar files in order
            tars = sorted(str(p) for p in Path(pattern).glob("*.tar"))
            if not tars:
                raise FileNotFoundError(f"no .tar shards in the folder {str(pattern)!r}")
            out.extend(tars)
            continue
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
        if stats is not None and not Path(url).is_file():
            raise FileNotFoundError(
                f"shard {url!r} does not exist"
                + (f" (its {stats.name} does)" if stats.is_file() else "")
                + "; check the shard pattern"
            )
        if stats is None or not stats.is_file():
            return None
        total += _promised(stats)
    return total


def _promised(stats: Path) -> int:
    """Samples a `*_stats.json` says its tar holds; a malformed one raises ValueError naming it."""
    data = read_json(stats, "shard stats file")
    try:
        return int(data.get("successes", data.get("count", 0)))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(
            f"shard stats file {str(stats)!r} has no integer 'successes' / 'count'; it is damaged "
            f"(delete it to count by reading the tar)"
        ) from None


# ----------------------------------------------------------------------------- writing


def write_shards(
    samples: Iterable,
    out_dir: str | os.PathLike,
    shard_size: int = 10_000,
    progress: bool = False,
    total: int | None = None,
) -> dict:
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
                for ext, payload in (
                    ("png", buf.getvalue()),
                    ("txt", sample.caption.encode()),
                    ("json", json.dumps(meta).encode()),
                ):
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
        write_json(
            out_dir / f"{name}_stats.json",
            {
                "count": in_shard,
                "successes": in_shard,
                "failed_to_download": 0,
                "failed_to_resize": 0,
                "duration": round(time.time() - start, 3),
                "status_dict": {"success": in_shard},
            },
        )
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
        self.notes: list[str] = []

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
        """webdataset handler for tars that cannot be opened: count and continue."""
        self.add("bad_tar")
        self.note(f"cannot open: {str(exn)[:120]}")
        return True

    def note(self, message: str) -> None:
        """Remember what went wrong (in this process only; DataLoader workers keep their own)."""
        if len(self.notes) < 100:
            self.notes.append(message)


class _EndAwareTarInfo(tarfile.TarInfo):
    """Marks a tar stream that ends without the end-of-archive blocks (tarfile just stops there)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]  # typeshed lacks
            tar.clipkit_cut_short = True
            raise


def tar_samples(sources: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
    """{"url", "stream"} dicts -> raw samples {"__key__", "__url__", ext: bytes}, grouped by key, lost ones counted.

    Like webdataset's tar expansion, plus honest counting: a tar that cannot be
    opened counts as `bad_tar`, one cut short as `truncated` (module docstring).
    The sample being read when a tar ends early is dropped (its members are incomplete).
    """
    from webdataset.tariterators import base_plus_ext

    for source in sources:
        url, seen, current, reason = source["url"], 0, None, None
        try:
            tar = tarfile.open(fileobj=source["stream"], mode="r|*", tarinfo=_EndAwareTarInfo)
            for info in tar:
                if not info.isreg() or info.name.startswith("__"):
                    continue
                member = tar.extractfile(info)
                assert member is not None  # a regular file (isreg above)
                data = member.read()  # raises ReadError on a short read
                tar.members = []  # type: ignore[attr-defined]  # not in typeshed; a long stream keeps no TarInfos
                prefix, suffix = base_plus_ext(info.name)
                if prefix is None:
                    continue
                if current is not None and prefix != current["__key__"]:
                    yield current
                    seen += 1
                    current = None
                if current is None:
                    current = {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = data
            reason = "truncated" if getattr(tar, "clipkit_cut_short", False) else None
        except (tarfile.TarError, OSError, EOFError, ValueError, zlib_error) as e:
            reason = "bad_tar" if seen == 0 and current is None else "truncated"
            counter.note(f"{url}: {reason} ({str(e)[:80]})")
        finally:
            with contextlib.suppress(Exception):
                source["stream"].close()
        if reason is None:
            if current is not None:
                yield current
            continue
        stats = _stats_path(url)
        promised = None
        if stats is not None and stats.is_file():
            with contextlib.suppress(ValueError):
                promised = _promised(stats)
        lost = max(1, promised - seen) if promised is not None else 1
        counter.add(reason, lost)


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
    from webdataset.tariterators import url_opener

    shard_list = expand_urls(urls)
    counter = counter or SkipCounter()
    world = (
        torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else 1
    )
    if not resampled and split_by_node and world > 1 and len(shard_list) < world:
        raise ValueError(
            f"{len(shard_list)} shard(s) cannot be split across {world} processes without "
            f"duplicates; write at least {world} shards or use resampled=True"
        )
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
    stages.append(lambda src: tar_samples(url_opener(src, handler=counter.tar_handler), counter))
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


def matches(meta: dict | None, filters: dict[str, list]) -> bool:
    """True when the sample's JSON metadata has, for every key in `filters`, one of the allowed values."""
    if not filters:
        return True
    if not meta:
        return False
    return all(str(meta.get(k)).lower() in {str(v).lower() for v in allowed} for k, allowed in filters.items())


def parse_filters(items) -> dict[str, list]:
    """["color=red,blue", "hat=true"] -> {"color": ["red", "blue"], "hat": ["true"]} (metadata filters)."""
    out = {}
    for item in items or []:
        key, _, values = str(item).partition("=")
        if not key or not values:
            raise ValueError(f"filter {item!r}; expected 'field=value1,value2' matched against each sample's json")
        out[key.strip()] = [v.strip() for v in values.split(",")]
    return out


def read_samples(
    urls,
    fields: tuple[str, ...] = ("image", "text"),
    limit: int | None = None,
    filters: dict[str, list] | None = None,
    counter: SkipCounter | None = None,
) -> list[tuple]:
    """Up to `limit` samples of shards `urls` as tuples of `fields`, in shard order, in this process
    (no rank or worker splitting): the one reader for evaluation sets, embedding pairs and small data.
    `filters` keep samples whose JSON metadata matches (see parse_filters); bad samples are skipped and
    counted in `counter`."""
    wanted = tuple(fields) if not filters or "json" in fields else tuple(fields) + ("json",)
    pipeline, _ = shard_pipeline(urls, fields=wanted, split_by_node=False, counter=counter)
    meta_at = wanted.index("json") if filters else None
    out = []
    for sample in pipeline:
        if filters and not matches(sample[meta_at], filters):
            continue
        out.append(sample[: len(fields)])
        if limit is not None and len(out) >= limit:
            break
    return out


def read_member_image(path: str | os.PathLike, key: str | None = None) -> Image.Image | None:
    """One image: `key`'s image inside a local shard tar, or the image file at `path`; None if absent."""
    path = Path(path)
    if path.suffix == ".tar":
        if not path.is_file() or key is None:
            return None
        with tarfile.open(path) as tar:
            for ext in IMAGE_EXTENSIONS:
                try:
                    member = tar.extractfile(f"{key}.{ext}")
                except KeyError:
                    continue
                if member is not None:
                    return to_rgb(Image.open(io.BytesIO(member.read())))
        return None
    return to_rgb(Image.open(path)) if path.is_file() else None


def _single_threaded_worker(_worker_id: int) -> None:
    # Decoding workers must not compete with the model's intra-op threads:
    # torch ops in a worker (ToTensor, Normalize) would otherwise spawn a full
    # thread pool per worker and oversubscribe the cores.
    torch.set_num_threads(1)


def shard_loader(pipeline, num_workers: int = 0, **kwargs):
    """A DataLoader over an already-batched pipeline (webdataset batches inside the workers)."""
    kwargs.setdefault("worker_init_fn", _single_threaded_worker)
    return torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False, **kwargs
    )
