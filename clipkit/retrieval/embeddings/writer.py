"""`write_embeddings` (CLI `clipkit embed`): resumable, distributed, and complete or absent.

    from clipkit.retrieval.embeddings.writer import write_embeddings
    write_embeddings(model, "emb", shards="data/{00000..00099}.tar", model_source="runs/clip")
    # torchrun --nproc_per_node 2 -m clipkit embed ...   (the same call on every rank, gloo on CPU)

The input is cut into work units: one unit per shard, or per `part_size` images
or texts. Unit u becomes part u (img_emb/img_emb_{u:05d}.npy, text_emb/...,
metadata/metadata_{u:05d}.parquet), so the output does not depend on how many
processes wrote it: rank r of W embeds units r, r+W, r+2W, ...

Everything is written into `.OUT.partial` beside OUT (clipkit.io), under OUT's
lock held by rank 0. A unit's parts are written first, then its record
`units/{u:05d}.json` (sizes, sha256, rows, skipped samples). A run started again
with the same arguments checks the records against their files (sha256), skips
the units that match and redoes the rest; when every unit is recorded, rank 0
writes manifest.json and swaps the folder into OUT. The layout is layout.py's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from clipkit.data.folders import list_images, read_caption, read_images
from clipkit.data.shards import SkipCounter, expand_urls, shard_pipeline
from clipkit.io import (
    MANIFEST_NAME,
    OutputError,
    Stage,
    atomic_file,
    begin_stage,
    check_output_path,
    file_record,
    output_lock,
    partial_dir_for,
    publish_stage,
    read_json,
    verify_parts,
    write_json,
    write_manifest,
)
from clipkit.io.errors import positive_int
from clipkit.retrieval.embeddings.layout import FIX, FORMAT, MODALITIES, part_path, require_finite

RUN_NAME, UNITS_DIR = "run.json", "units"


# ----------------------------------------------------------------------------- planning (every rank, no writes)


class _Plan:
    """What to embed, cut into units, and the signature a resumed run must match."""

    def __init__(self, model, images, shards, texts, captions, batch_size, part_size, dtype):
        batch_size, part_size = positive_int(batch_size, "batch_size"), positive_int(part_size, "part_size")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype={dtype!r}; expected 'float32' or 'float16'")
        if images is not None and shards is not None:
            raise ValueError("give either images or shards, not both")
        if images is None and shards is None and texts is None:
            raise ValueError("nothing to embed: give images, shards and/or texts")
        if texts is not None and shards is not None:
            raise ValueError("shards carry their own captions; do not pass texts with shards")
        self.inputs: list = []
        if isinstance(texts, (str, os.PathLike)):
            path = Path(texts)
            if not path.is_file():
                raise FileNotFoundError(f"texts file {str(path)!r} does not exist")
            self.inputs.append(path)
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not texts:
                raise ValueError(f"texts file {str(path)!r} holds no text (every line is empty); nothing to embed")
        self.root_dir = None
        # What a unit is, by source: a shard url (str), (start, image paths, captions or None), (start, texts).
        self.units: list[Any]
        # Local paths are recorded absolute (the metadata's `path` column, the signature), so an index
        # built from the output finds its images from any working directory (`clipkit serve` elsewhere).
        if shards is not None:
            self.source, self.units = "shards", []
            for url in expand_urls(shards):
                if "://" not in url and not url.startswith("pipe:"):
                    if not Path(url).is_file():
                        raise FileNotFoundError(f"shard {url!r} does not exist")
                    self.inputs.append(url)
                    url = os.path.abspath(url)
                self.units.append(url)
            keys = list(self.units)
        elif images is not None:
            paths = [os.path.abspath(p) for p in list_images(images)]
            if isinstance(images, (str, os.PathLike)):
                self.inputs.append(images)
                self.root_dir = Path(os.path.abspath(images)) if Path(images).is_dir() else None
            if texts is not None and len(texts) != len(paths):
                raise ValueError(
                    f"{len(texts)} texts for {len(paths)} images; captions must match the images one to one"
                )
            if texts is None:
                found = [read_caption(p) for p in paths]
                texts = found if all(c is not None for c in found) else None
            self.source = "images"
            self.units = [
                (s, paths[s : s + part_size], None if texts is None else texts[s : s + part_size])
                for s in range(0, len(paths), part_size)
            ]
            keys = paths + (texts or [])
        else:
            texts = list(texts)
            if not texts:
                raise ValueError("texts is empty; nothing to embed")
            self.source = "texts"
            self.units = [(s, texts[s : s + part_size]) for s in range(0, len(texts), part_size)]
            keys = texts
        self.captions, self.batch_size, self.dtype = captions, batch_size, dtype
        digest = hashlib.sha256("\n".join(map(str, keys)).encode()).hexdigest()
        self.signature = {
            "model": model.identity,
            "embed_dim": model.embed_dim,
            "source": self.source,
            "inputs_sha256": digest,
            "units": len(self.units),
            "captions": bool(captions),
            "part_size": part_size if self.source != "shards" else None,
            "dtype": dtype,
        }


# ----------------------------------------------------------------------------- distributed plumbing


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group a launcher (torchrun, accelerate) prepared, over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        if "OMP_NUM_THREADS" not in os.environ:  # ranks on one machine share its cores
            local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist.get_rank(), dist.get_world_size()


def _broadcast(obj, world: int):  # rank 0's obj on every rank
    if world > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


def _gather(obj, world: int) -> list:  # every rank's obj on every rank
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- the job


def write_embeddings(
    model,
    out_dir: str | os.PathLike,
    *,
    images=None,
    shards=None,
    texts=None,
    captions: bool = True,
    batch_size: int = 256,
    part_size: int = 100_000,
    dtype: str = "float32",
    overwrite: bool = False,
    allow_empty: bool = False,
    progress: bool = True,
    model_source: str | None = None,
) -> dict:
    """Embed images and/or texts with `model` into `out_dir` (the layout of layout.py).

    Sources (give one of images / shards, and/or texts):
      images  an image folder, a file list (.txt, one path a line) or a list of paths;
              captions come from `<stem>.txt` next to each image (all or none), or from `texts`
      shards  webdataset shard url(s) ('data/{00000..00009}.tar'): image + caption + json; one part per shard
      texts   a list of strings or a text file (one a line): captions for `images`, or on their own
    `captions=False` skips the caption embeddings. `model_source` (a directory or preset
    name) is recorded so `clipkit search` can load the model again. Local image and shard
    paths, and a model_source directory, are recorded absolute: what the output points at
    resolves from any working directory. Unreadable samples
    are skipped and counted; no row at all is an error unless `allow_empty`.

    An existing OUT made with the same arguments is kept as it is (nothing to do);
    other embeddings there are replaced only with `overwrite`, and only once the
    new ones are complete; anything else there is refused. An interrupted run
    resumes when started again with the same arguments. Returns the manifest.
    """
    plan = _Plan(model, images, shards, texts, captions, batch_size, part_size, dtype)
    out = Path(out_dir)
    rank, world = _distributed()
    with contextlib.ExitStack() as stack:
        status = None
        if rank == 0:
            try:
                status = _prepare(out, plan, overwrite, stack)
            except Exception as e:  # every rank must learn of it, or the others wait forever
                status = ("error", e)
        status = _broadcast(status, world)
        if status[0] == "error":
            raise status[1]
        if status[0] == "done":
            return status[1]
        stage_dir = Path(status[1])
        error, started = None, time.time()
        try:
            _embed_units(model, plan, stage_dir, rank, world, progress)
        except Exception as e:
            error = e
        errors = [e for e in _gather(error, world) if e is not None]
        if errors:
            raise errors[0] if error is None else error
        timing = {"processes": world, "embed_seconds": round(time.time() - started, 3)}
        result: tuple[str, Any] | None = None
        if rank == 0:
            try:
                result = ("ok", _finish(out, plan, stage_dir, model_source, allow_empty, timing))
            except Exception as e:
                result = ("error", e)
        result = _broadcast(result, world)
        if result[0] == "error":
            raise result[1]
        return result[1]


def _prepare(out: Path, plan: _Plan, overwrite: bool, stack: contextlib.ExitStack):
    """Rank 0: refuse what must be refused, take the lock, create or resume the staging folder."""
    check_output_path(out, FORMAT, plan.inputs, overwrite)  # fail fast, then again under the lock
    stack.enter_context(output_lock(out))
    existing = check_output_path(out, FORMAT, plan.inputs, overwrite)
    if existing:
        manifest = read_json(out / MANIFEST_NAME, "manifest")
        if manifest.get("signature") == plan.signature and not overwrite:
            verify_parts(out, manifest, fix=FIX)
            return ("done", manifest)
        if not overwrite:
            raise OutputError(
                f"{str(out)!r} already holds embeddings made with other arguments or another model "
                f"({_difference(manifest.get('signature') or {}, plan.signature)}); pass --overwrite "
                f"(overwrite=True) to replace them once the new ones are complete, or choose another "
                f"folder"
            )
    partial = partial_dir_for(out)
    run_file = partial / RUN_NAME
    if partial.is_dir() and run_file.is_file():
        before = read_json(run_file, "embedding run record")
        if before.get("signature") != plan.signature and not overwrite:
            raise OutputError(
                f"an interrupted `clipkit embed` with other arguments "
                f"({_difference(before.get('signature') or {}, plan.signature)}) left {str(partial)!r}; "
                f"re-run that command to finish it, or pass --overwrite to discard it"
            )
        resume = before.get("signature") == plan.signature
    else:
        resume = False
    stage = begin_stage(out, FORMAT, resume=resume)
    if not stage.resumed:
        write_json(stage.dir / RUN_NAME, {"signature": plan.signature})
    return ("run", str(stage.dir))


def _difference(a: dict, b: dict) -> str:
    return (
        ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        or "unknown"
    )


def _unit_record_path(stage_dir: Path, u: int) -> Path:
    return stage_dir / UNITS_DIR / f"{u:05d}.json"


def _record_ok(stage_dir: Path, u: int, signature: dict, full: bool = True) -> dict | None:
    """The record of unit u if it exists and its files match it (sizes; byte for byte by sha256 if `full`)."""
    path = _unit_record_path(stage_dir, u)
    if not path.is_file():
        return None
    try:
        record = read_json(path, "unit record")
        if record.get("signature_sha256") != _sig_hash(signature):
            return None
        verify_parts(stage_dir, {"parts": record["files"]}, full=full)
        return record
    except (ValueError, KeyError, OSError):
        return None


def _sig_hash(signature: dict) -> str:
    return hashlib.sha256(repr(sorted(signature.items())).encode()).hexdigest()


def _embed_units(model, plan: _Plan, stage_dir: Path, rank: int, world: int, progress: bool) -> None:
    mine = list(range(rank, len(plan.units), world))
    todo = [u for u in mine if _record_ok(stage_dir, u, plan.signature) is None]
    if rank == 0 and len(todo) < len(mine):
        tqdm.write(f"resuming: {len(mine) - len(todo)} of {len(mine)} part(s) already complete (checked)")
    bar = tqdm(total=len(todo), disable=not progress or rank != 0, unit="part", desc="embed")
    for u in todo:
        rows, img, txt, skipped = _embed_unit(model, plan, u)
        files = {}
        for name, arr in (("img", img), ("text", txt)):
            if arr is not None and len(rows):
                files[_write_npy(stage_dir, name, u, arr.astype(plan.dtype))] = len(rows)
        if rows:
            files[_write_parquet(stage_dir, u, rows)] = len(rows)
        record = {
            "unit": u,
            "rows": len(rows),
            "skipped": skipped,
            "signature_sha256": _sig_hash(plan.signature),
            "files": {rel: file_record(stage_dir / rel, n) for rel, n in files.items()},
        }
        write_json(_unit_record_path(stage_dir, u), record)
        bar.update(1)
    bar.close()


def _write_npy(stage_dir: Path, modality: str, u: int, arr: np.ndarray) -> str:
    path = part_path(stage_dir, modality, u)
    with atomic_file(path, "wb") as f:
        np.save(f, arr)
    return str(path.relative_to(stage_dir))


def _write_parquet(stage_dir: Path, u: int, rows: list[dict]) -> str:
    path = part_path(stage_dir, "metadata", u)
    with atomic_file(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    return str(path.relative_to(stage_dir))


def _finish(out: Path, plan: _Plan, stage_dir: Path, model_source: str | None, allow_empty: bool, timing: dict) -> dict:
    """Rank 0: every unit recorded -> manifest.json -> swapped into OUT."""
    records = []
    for u in range(len(plan.units)):
        record = _record_ok(stage_dir, u, plan.signature, full=False)  # hashed when written or resumed
        if record is None:
            raise OutputError(
                f"part {u} of {str(out)!r} is missing or damaged in {str(stage_dir)!r} after every "
                f"process finished; re-run the same command to redo it"
            )
        records.append(record)
    skipped: dict = {}
    for r in records:
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    count = sum(r["rows"] for r in records)
    if count == 0 and not allow_empty:
        shutil.rmtree(stage_dir, ignore_errors=True)
        raise ValueError(
            f"nothing was embedded into {str(out)!r}: every input was unreadable (skipped {skipped}); "
            f"check the inputs (or pass allow_empty=True / --allow-empty to write an empty folder)"
        )
    parts = {rel: rec for r in records for rel, rec in r["files"].items()}
    modalities = [m for m in MODALITIES if any(rel.startswith(f"{m}_emb/") for rel in parts)]
    shutil.rmtree(stage_dir / UNITS_DIR, ignore_errors=True)
    (stage_dir / RUN_NAME).unlink()
    if model_source is not None and Path(model_source).is_dir():
        model_source = os.path.abspath(model_source)  # found again from any working directory
    manifest = write_manifest(
        stage_dir,
        FORMAT,
        parts,
        model=plan.signature["model"],
        embed_dim=plan.signature["embed_dim"],
        model_source=model_source,
        dtype=plan.dtype,
        source=plan.source,
        count=count,
        parts_count=sum(1 for r in records if r["rows"]),
        modalities=modalities,
        skipped=skipped,
        signature=plan.signature,
        **timing,
    )
    publish_stage(Stage(out, FORMAT, resumed=True))
    return manifest


# ----------------------------------------------------------------------------- one unit


def _embed_unit(model, plan: _Plan, u: int) -> tuple[list[dict], np.ndarray | None, np.ndarray | None, dict]:
    if plan.source == "shards":
        return _embed_shard(model, plan, plan.units[u])
    if plan.source == "images":
        return _embed_images(model, plan, *plan.units[u][1:])
    start, texts = plan.units[u]
    keys = [f"{start + i:09d}" for i in range(len(texts))]
    rows = [{"key": k, "path": None, "caption": t} for k, t in zip(keys, texts)]
    return rows, None, _encode_texts(model, texts, plan.batch_size, keys), {}


def _encode_texts(model, texts, batch_size, keys) -> np.ndarray:
    out = model.encode_texts(list(texts), batch_size=batch_size).numpy()
    require_finite(out, "text embeddings", keys)
    return out


def _embed_shard(model, plan: _Plan, url: str):
    counter = SkipCounter()
    pipeline, _ = shard_pipeline(
        [url],
        image_transform=model.preprocess,
        batch_size=plan.batch_size,
        counter=counter,
        fields=("image", "text", "__key__", "json"),
        split_by_node=False,
    )
    rows, imgs, txts = [], [], []
    for images, texts, keys, metas in pipeline:
        img = model.encode_images(images, batch_size=plan.batch_size).numpy()
        require_finite(img, "image embeddings", keys)
        imgs.append(img)
        if plan.captions:
            txts.append(_encode_texts(model, texts, plan.batch_size, keys))
        rows += [{"key": k, "path": url, "caption": t, **_scalar_fields(m)} for k, t, m in zip(keys, texts, metas)]
    return rows, _cat(imgs), _cat(txts), {k: v for k, v in counter.summary().items() if v}


def _embed_images(model, plan: _Plan, paths: list[str], caps: list[str] | None):
    def load(i):  # the folder policy (clipkit.data.folders.read_images): skip, count by reason
        skipped: Counter = Counter()
        got = next(read_images([paths[i]], skipped), None)
        return (None if got is None else model.preprocess(got[2])), skipped

    rows: list[dict] = []
    imgs: list[np.ndarray] = []
    txts: list[np.ndarray] = []
    bad: Counter = Counter()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for s in range(0, len(paths), plan.batch_size):
            idx = list(range(s, min(s + plan.batch_size, len(paths))))
            results = list(pool.map(load, idx))
            for _, skipped in results:
                bad.update(skipped)
            loaded = [tensor for tensor, _ in results]
            keep = [i for i, t in zip(idx, loaded) if t is not None]
            if not keep:
                continue
            keys = [_key_for(paths[i], plan.root_dir) for i in keep]
            batch = torch.stack([t for t in loaded if t is not None])
            img = model.encode_images(batch, batch_size=plan.batch_size).numpy()
            require_finite(img, "image embeddings", keys)
            imgs.append(img)
            if caps is not None and plan.captions:
                txts.append(_encode_texts(model, [caps[i] for i in keep], plan.batch_size, keys))
            rows += [
                {"key": k, "path": paths[i], "caption": None if caps is None else caps[i]} for k, i in zip(keys, keep)
            ]
    return rows, _cat(imgs), _cat(txts), dict(bad)


def _cat(arrays: list) -> np.ndarray | None:
    return np.concatenate(arrays) if arrays else None


def _key_for(path: str, root: Path | None) -> str:
    p = Path(path)
    if root is not None:
        try:
            return str(p.relative_to(root).with_suffix(""))
        except ValueError:
            pass
    return p.stem


def _scalar_fields(meta: dict | None) -> dict:
    """The flat (str/number/bool) fields of a sample's json, minus the ones we set ourselves."""
    return {
        k: v
        for k, v in (meta if isinstance(meta, dict) else {}).items()
        if k not in ("key", "path", "caption") and isinstance(v, (str, int, float, bool))
    }
