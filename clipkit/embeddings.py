"""Embeddings on disk in clip-retrieval's inference layout, written in parts and read back in chunks.

Layout (what clip-retrieval's `inference` writes, so autofaiss and embedding-reader read it):

    OUT/img_emb/img_emb_0.npy          (n0, D) image embeddings, L2-normalised
    OUT/text_emb/text_emb_0.npy        (n0, D) caption embeddings of the same rows (when there are captions)
    OUT/metadata/metadata_0.parquet    n0 rows: key, path, caption (+ scalar fields of a shard's json)
    OUT/img_emb/img_emb_1.npy ...      the next part, and so on
    OUT/embed_info.json                model identity, embed dim, dtype, counts, skipped samples (ours)

Row i of part p is the same sample in all three files. Rows are numbered
globally in part order (part 0 first); that number is the id an index built
from this folder returns.

Writing (`write_embeddings`, CLI `clipkit embed`) keeps memory bounded: at
most `part_size` rows are buffered before a part is written (atomically).

Reading, our streaming reader:

    from clipkit.embeddings import EmbeddingFolder, read_embeddings
    folder = EmbeddingFolder("OUT")
    folder.count, folder.dim, folder.modalities, folder.info     # 20000, 128, ("img", "text"), {...}
    for vectors, meta in folder.chunks("img", chunk_size=65536):  # float32 (n, D), {"key": [...], "caption": [...], ...}
        ...
    for img, txt, meta in folder.pairs(chunk_size=4096):          # aligned image / caption embeddings (prior training)
        ...
    folder.load("text")                                            # everything as one (N, D) float32 array
    folder.metadata(columns=["key", "caption"])                   # all metadata as {column: list}
    read_embeddings("OUT", "img")                                  # = EmbeddingFolder("OUT").chunks("img")

Chunks never span two parts (a chunk has at most `chunk_size` rows).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from clipkit.io import atomic_file, write_json

MODALITIES = ("img", "text")
INFO_NAME = "embed_info.json"
_PART = re.compile(r"^(img_emb|text_emb|metadata)_(\d+)\.(npy|parquet)$")


def _part_path(root: Path, kind: str, index: int) -> Path:
    if kind == "metadata":
        return root / "metadata" / f"metadata_{index}.parquet"
    return root / f"{kind}_emb" / f"{kind}_emb_{index}.npy"


# ----------------------------------------------------------------------------- writing

class _PartWriter:
    """Buffers rows and writes them as numbered parts of at most `part_size` rows."""

    def __init__(self, root: Path, part_size: int, dtype: str):
        self.root, self.part_size, self.dtype = root, part_size, np.dtype(dtype)
        self.buffers: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
        self.meta: list[dict] = []
        self.parts, self.count, self.dim = 0, 0, None

    def add(self, meta_rows: list[dict], img: np.ndarray | None = None, text: np.ndarray | None = None) -> None:
        n = len(meta_rows)
        for name, arr in (("img", img), ("text", text)):
            if arr is not None:
                assert len(arr) == n, (name, len(arr), n)
                self.dim = arr.shape[1]
                self.buffers[name].append(np.asarray(arr, dtype=self.dtype))
        self.meta.extend(meta_rows)
        if len(self.meta) >= self.part_size:
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Write every full part (and the last, partial one when `final`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        while len(self.meta) >= (1 if final else self.part_size):
            n = min(len(self.meta), self.part_size)
            for name in MODALITIES:
                if self.buffers[name]:
                    arr = np.concatenate(self.buffers[name])
                    with atomic_file(_part_path(self.root, name, self.parts), "wb") as f:
                        np.save(f, arr[:n])
                    self.buffers[name] = [arr[n:]] if len(arr) > n else []
            rows, self.meta = self.meta[:n], self.meta[n:]
            table = pa.Table.from_pylist(rows)
            with atomic_file(_part_path(self.root, "metadata", self.parts), "wb") as f:
                pq.write_table(table, f)
            self.parts += 1
            self.count += n


def _scalar_fields(meta: dict | None) -> dict:
    """The flat (str/number/bool) fields of a sample's json, minus the ones we set ourselves."""
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items()
            if k not in ("key", "path", "caption") and isinstance(v, (str, int, float, bool))}


def write_embeddings(model, out_dir: str | os.PathLike, *, images=None, shards=None, texts=None,
                     captions: bool = True, batch_size: int = 256, part_size: int = 100_000,
                     dtype: str = "float32", overwrite: bool = False, progress: bool = True,
                     model_source: str | None = None) -> dict:
    """Embed images and/or texts with `model` into `out_dir` (layout in the module docstring).

    Sources (give one of images / shards, and/or texts):
      images  an image folder, a file list (.txt, one path a line) or a list of paths;
              captions come from `<stem>.txt` next to each image (all or none), or from `texts`
      shards  webdataset shard url(s) ('data/{00000..00009}.tar'): image + caption + json
      texts   a list of strings or a text file (one a line): captions for `images`, or on their own
    `captions=False` skips the caption (text) embeddings. `model_source` (how to load the model
    again: a directory or preset name) is recorded for `clipkit search`. Returns a summary dict (also saved
    as embed_info.json).
    """
    from tqdm.auto import tqdm

    if part_size < 1:
        raise ValueError(f"part_size={part_size}; expected >= 1")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype={dtype!r}; expected 'float32' or 'float16'")
    if images is not None and shards is not None:
        raise ValueError("give either images or shards, not both")
    if images is None and shards is None and texts is None:
        raise ValueError("nothing to embed: give images, shards and/or texts")
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            raise FileNotFoundError(f"texts file {str(path)!r} does not exist")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if texts is not None and shards is not None:
        raise ValueError("shards carry their own captions; do not pass texts with shards")

    root = Path(out_dir)
    existing = [p for sub in ("img_emb", "text_emb", "metadata") for p in (root / sub).glob("*") if _PART.match(p.name)]
    if existing and not overwrite:
        raise ValueError(f"{str(root)!r} already holds embeddings ({len(existing)} part files); "
                               f"pass overwrite=True (--overwrite) or choose another folder")
    for sub in ("img_emb", "text_emb", "metadata"):
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    writer = _PartWriter(root, part_size, dtype)
    summary: dict = {"model": model.identity, "embed_dim": model.embed_dim, "model_source": model_source,
                     "dtype": dtype, "skipped": {}}

    if shards is not None:
        summary["source"] = "shards"
        summary["skipped"] = _embed_shards(model, writer, shards, captions, batch_size, progress)
    elif images is not None:
        from clipkit.data.folders import list_images, read_caption

        paths = list_images(images)
        summary["source"] = "images"
        if texts is not None and len(texts) != len(paths):
            raise ValueError(f"{len(texts)} texts for {len(paths)} images; captions must match the images one to one")
        if texts is None:
            found = [read_caption(p) for p in paths]
            texts = found if all(c is not None for c in found) else None
        root_dir = Path(images) if isinstance(images, (str, os.PathLike)) and Path(images).is_dir() else None
        bar = tqdm(total=len(paths), disable=not progress, unit="img", desc="embed images")
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            img = model.encode_images(chunk, batch_size=batch_size).numpy()
            txt = None
            caps = texts[start:start + batch_size] if texts is not None else [None] * len(chunk)
            if texts is not None and captions:
                txt = model.encode_texts(caps, batch_size=batch_size).numpy()
            rows = [{"key": _key_for(p, root_dir), "path": p, "caption": c} for p, c in zip(chunk, caps)]
            writer.add(rows, img=img, text=txt)
            bar.update(len(chunk))
        bar.close()
    else:
        summary["source"] = "texts"
        bar = tqdm(total=len(texts), disable=not progress, unit="text", desc="embed texts")
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            txt = model.encode_texts(chunk, batch_size=batch_size).numpy()
            rows = [{"key": f"{start + i:09d}", "path": None, "caption": c} for i, c in enumerate(chunk)]
            writer.add(rows, text=txt)
            bar.update(len(chunk))
        bar.close()
    writer.flush()
    summary.update(count=writer.count, parts=writer.parts,
                   modalities=[m for m in MODALITIES if (root / f"{m}_emb").is_dir()])
    write_json(root / INFO_NAME, summary)
    return summary


def _key_for(path: str, root: Path | None) -> str:
    p = Path(path)
    if root is not None:
        try:
            return str(p.relative_to(root).with_suffix(""))
        except ValueError:
            pass
    return p.stem


def _embed_shards(model, writer: _PartWriter, shards, captions: bool, batch_size: int, progress: bool) -> dict:
    """Shard by shard (so each row records its tar), batch by batch."""
    from tqdm.auto import tqdm

    from clipkit.data.shards import SkipCounter, count_samples, expand_urls, shard_pipeline

    urls = expand_urls(shards)
    for url in urls:
        if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
            raise FileNotFoundError(f"shard {url!r} does not exist")
    counter = SkipCounter()
    bar = tqdm(total=count_samples(urls), disable=not progress, unit="img", desc="embed shards")
    for url in urls:
        pipeline, _ = shard_pipeline([url], image_transform=model.preprocess, batch_size=batch_size,
                                     counter=counter, fields=("image", "text", "__key__", "json"),
                                     split_by_node=False)
        for images, texts, keys, metas in pipeline:
            img = model.encode_images(images, batch_size=batch_size).numpy()
            txt = model.encode_texts(list(texts), batch_size=batch_size).numpy() if captions else None
            rows = [{"key": k, "path": url, "caption": t, **_scalar_fields(m)} for k, t, m in zip(keys, texts, metas)]
            writer.add(rows, img=img, text=txt)
            bar.update(len(keys))
    bar.close()
    return counter.summary()


# ----------------------------------------------------------------------------- reading

class EmbeddingFolder:
    """A folder in clip-retrieval's layout: counts, dims, and chunked reads (see module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"embedding folder {str(self.root)!r} does not exist")
        self.modalities = tuple(m for m in MODALITIES if sorted((self.root / f"{m}_emb").glob(f"{m}_emb_*.npy")))
        meta_parts = self._indices("metadata")
        if not self.modalities and not meta_parts:
            raise ValueError(f"{str(self.root)!r} holds no img_emb/*.npy or text_emb/*.npy parts; "
                             f"expected clip-retrieval's layout (see `clipkit embed`)")
        parts = self._indices(self.modalities[0]) if self.modalities else meta_parts
        self.parts = parts
        self._rows: list[int] = []
        self._dims: dict[str, int] = {}
        for m in self.modalities:
            if self._indices(m) != parts:
                raise ValueError(f"{str(self.root)!r}: {m}_emb parts {self._indices(m)} do not match {parts}")
        for i in parts:
            counts = {}
            for m in self.modalities:
                arr = np.load(_part_path(self.root, m, i), mmap_mode="r")
                if arr.ndim != 2:
                    raise ValueError(f"{_part_path(self.root, m, i)} has shape {arr.shape}; expected (n, D)")
                counts[m] = arr.shape[0]
                self._dims.setdefault(m, arr.shape[1])
            if meta_parts:
                counts["metadata"] = self._metadata_rows(i)
            if len(set(counts.values())) > 1:
                raise ValueError(f"{str(self.root)!r} part {i} is misaligned: rows {counts}")
            self._rows.append(next(iter(counts.values())))
        self.has_metadata = bool(meta_parts)
        info = self.root / INFO_NAME
        self.info: dict = json.loads(info.read_text()) if info.is_file() else {}

    def _indices(self, kind: str) -> list[int]:
        folder = self.root / ("metadata" if kind == "metadata" else f"{kind}_emb")
        stem = "metadata" if kind == "metadata" else f"{kind}_emb"
        found = [int(m.group(2)) for p in folder.glob(f"{stem}_*") if (m := _PART.match(p.name))]
        return sorted(found)

    def _metadata_rows(self, i: int) -> int:
        import pyarrow.parquet as pq

        return pq.ParquetFile(_part_path(self.root, "metadata", i)).metadata.num_rows

    @property
    def count(self) -> int:
        return sum(self._rows)

    @property
    def dim(self) -> int:
        """Embedding dim (of the image embeddings when present)."""
        if not self._dims:
            raise ValueError(f"{str(self.root)!r} holds metadata only, no embeddings")
        return self._dims.get("img", next(iter(self._dims.values())))

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"EmbeddingFolder({str(self.root)!r}, count={self.count}, modalities={self.modalities}, parts={len(self.parts)})"

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"modality={modality!r} is not in {str(self.root)!r}; available: {self.modalities}")

    def _read_meta(self, part: int, start: int, stop: int, columns) -> dict:
        import pyarrow.parquet as pq

        table = pq.read_table(_part_path(self.root, "metadata", part), columns=columns)
        return table.slice(start, stop - start).to_pydict()

    def chunks(self, modality: str = "img", chunk_size: int = 65536, metadata: bool = True,
               columns: Sequence[str] | None = None) -> Iterator[tuple[np.ndarray, dict | None]]:
        """Yield (float32 (n, D) vectors, {column: list} or None) chunks in row order."""
        for arrays, meta in self._iterate((modality,), chunk_size, metadata, columns):
            yield arrays[0], meta

    def pairs(self, chunk_size: int = 65536, metadata: bool = False,
              columns: Sequence[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, dict | None]]:
        """Yield aligned (image, text, metadata) chunks: row j of both arrays is the same sample."""
        for (img, txt), meta in self._iterate(("img", "text"), chunk_size, metadata, columns):
            yield img, txt, meta

    def _iterate(self, modalities, chunk_size, metadata, columns):
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}; expected >= 1")
        for m in modalities:
            self._check_modality(m)
        if metadata and not self.has_metadata:
            raise ValueError(f"{str(self.root)!r} has no metadata parts; pass metadata=False")
        for part, rows in zip(self.parts, self._rows):
            arrays = [np.load(_part_path(self.root, m, part), mmap_mode="r") for m in modalities]
            table = None
            for start in range(0, rows, chunk_size):
                stop = min(rows, start + chunk_size)
                meta = None
                if metadata:
                    if table is None:
                        import pyarrow.parquet as pq
                        table = pq.read_table(_part_path(self.root, "metadata", part), columns=columns)
                    meta = table.slice(start, stop - start).to_pydict()
                yield [np.ascontiguousarray(a[start:stop], dtype=np.float32) for a in arrays], meta

    def load(self, modality: str = "img") -> np.ndarray:
        """All embeddings of one modality as one float32 (N, D) array."""
        self._check_modality(modality)
        out = np.empty((self.count, self._dims[modality]), dtype=np.float32)
        row = 0
        for vectors, _ in self.chunks(modality, chunk_size=1 << 20, metadata=False):
            out[row:row + len(vectors)] = vectors
            row += len(vectors)
        return out

    def metadata(self, columns: Sequence[str] | None = None) -> dict[str, list]:
        """All metadata rows as {column: list} (columns missing in some part are filled with None)."""
        import pyarrow.parquet as pq

        if not self.has_metadata:
            raise ValueError(f"{str(self.root)!r} has no metadata parts")
        out: dict[str, list] = {}
        done = 0
        for part, rows in zip(self.parts, self._rows):
            schema = pq.read_schema(_part_path(self.root, "metadata", part))
            cols = None if columns is None else [c for c in columns if c in schema.names]
            data = pq.read_table(_part_path(self.root, "metadata", part), columns=cols).to_pydict()
            for name in set(out) | set(data):
                out.setdefault(name, [None] * done).extend(data.get(name, [None] * rows))
            done += rows
        return out


def read_embeddings(path: str | os.PathLike, modality: str = "img", chunk_size: int = 65536,
                    metadata: bool = True) -> Iterator[tuple[np.ndarray, dict | None]]:
    """Stream (float32 vectors, metadata) chunks from an embedding folder."""
    return EmbeddingFolder(path).chunks(modality, chunk_size=chunk_size, metadata=metadata)


def iterate_arrays(chunks: Iterable) -> Iterator[np.ndarray]:
    """Vectors only, from an iterator of arrays or of (vectors, metadata) tuples."""
    for item in chunks:
        yield item[0] if isinstance(item, tuple) else item
