"""EmbeddingIndex: a FAISS index with ids, metadata and a manifest that refuses to mix models.

    index = EmbeddingIndex.build(vectors)                      # float32 (n, d); kind="auto"
    index = EmbeddingIndex.build(EmbeddingFolder("emb"))       # or a folder / path written by `clipkit embed`
    index = EmbeddingIndex.build(chunk_iterator, count=10**8)  # or an iterator of (n_i, d) chunks
    scores, ids = index.search(queries, k=10)                  # (nq, k) float32, (nq, k) int64; -1 = no hit
    scores, ids = index.search_text(model, "a red circle", k=10)
    index.lookup(ids[0])                                       # metadata rows of the hits
    index.add(more_vectors) ; index.add(EmbeddingFolder("emb2"))  # grows (same model); ids continue
    index.remove([3, 17])                                      # flat / IVF kinds (HNSW cannot delete)
    index.save("idx"); EmbeddingIndex.load("idx", mmap=True)
    merged = EmbeddingIndex.merge([piece_a, piece_b])          # pieces from one trained index (index_pieces.py)

The saved folder is a complete-or-absent output (clipkit.io): manifest.json,
written last, lists index.faiss / ids.npy / metadata.parquet with sizes, sha256
and rows, the model identity and the count; `load` refuses a folder that does
not match it. Search k is capped at the index size; NaN / inf vectors are
refused with their count and first row.

Kinds: "flat" (exact), "hnsw" (HNSW32 graph), "ivf" (IVF-Flat), "ivfpq"
(OPQ + IVF + PQ codes, for sets whose raw vectors do not fit in memory).
"auto" picks as autofaiss does, by size and by a memory budget (index_tuning.py).

Approximate kinds are trained on a sample (the first rows of an iterator),
filled in batches, then their search parameter (nprobe / efSearch) is tuned to
the smallest value whose recall@k reaches `recall_target` on held-out queries:
rows of the data searched leave-one-out (the query's own row is ignored in
both the exact and the approximate answer), ground truth computed exactly
while the vectors stream in. The achieved recall is kept in the manifest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from clipkit.index_tuning import (KINDS, GroundTruth, available_memory, choose_index,  # noqa: F401
                                  estimate_memory, factory_for, kind_of, recall_at_k)
from clipkit.index_sources import Source as _Source
from clipkit.index_sources import as_matrix as _as_matrix
from clipkit.index_sources import check_finite, checked_ids as _checked_ids, checked_metadata as _checked_metadata  # noqa: F401
from clipkit.index_sources import model_info as _model_info, trained_fingerprint as _trained_fingerprint
from clipkit.index_sources import training_rows
from clipkit.io import MANIFEST_NAME, read_manifest, staged_output, write_manifest

METRICS = ("ip", "l2")
FORMAT, FORMAT_VERSION = "clipkit-index", 2
INDEX_NAME, IDS_NAME, METADATA_NAME, IVFDATA_NAME = "index.faiss", "ids.npy", "metadata.parquet", "index.ivfdata"
FIX = "rebuild it with `clipkit index build` (or EmbeddingIndex.build(...).save(...))"


# ----------------------------------------------------------------------------- the index

class EmbeddingIndex:
    """FAISS index + manifest (+ optional ids and metadata). Build with `build`, or `load` a saved one."""

    def __init__(self, index, manifest: dict, ids: np.ndarray | None = None, metadata: dict | None = None):
        self.index, self.manifest, self.ids, self.metadata = index, manifest, ids, metadata
        self._positions: dict | None = None
        self.ivfdata: Path | None = None          # the file of on-disk inverted lists, if any (index_pieces)
        self._apply_search_params()

    # ---------------------------------------------------------------- properties
    dim = property(lambda self: int(self.manifest["dim"]))
    kind = property(lambda self: self.manifest["kind"])
    metric = property(lambda self: self.manifest["metric"])
    params = property(lambda self: dict(self.manifest["params"]))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return (f"EmbeddingIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}, metric={self.metric!r}, "
                f"params={self.params})")

    # ---------------------------------------------------------------- building
    @classmethod
    def trained(cls, sample, kind: str = "auto", metric: str = "ip", *, count: int | None = None,
                max_memory: int | None = None, train_size: int | None = None, seed: int = 0,
                model_info: dict | None = None) -> "EmbeddingIndex":
        """An empty index of `kind` for `count` vectors, trained on (a random subset of) the (n, d) `sample`.

        The starting point of build-in-pieces: every piece is `trained.empty_copy()` filled
        with its own vectors, and pieces of one trained index merge (clipkit.index_pieces).
        """
        import faiss

        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not one of {METRICS}")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        sample = _as_matrix(sample, "training sample")
        check_finite(sample, "training sample")
        n, d = max(count or 0, len(sample)), sample.shape[1]
        factory = factory_for(kind, n, d, max_memory)
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
        rng = np.random.default_rng(seed)
        if not index.is_trained:
            want = train_size or min(len(sample), max(40 * getattr(faiss.extract_index_ivf(index), "nlist", 1), 10_000))
            train = sample[np.sort(rng.choice(len(sample), size=min(want, len(sample)), replace=False))]
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.niter = 10
            if len(train) < ivf.nlist:
                raise ValueError(f"{len(train)} training vectors for {ivf.nlist} IVF cells; give more data "
                                 f"(--train-on / train_size) or kind='flat'")
            ivf = faiss.downcast_index(ivf)
            if hasattr(ivf, "do_polysemous_training"):
                if len(train) < 256:
                    raise ValueError(f"{len(train)} training vectors; PQ codes need at least 256 (and ~10,000 "
                                     f"for good codes); give more data or use kind='ivf' / 'flat'")
                ivf.do_polysemous_training = False     # on by default in the factory, and very slow
                ivf.pq.cp.niter = 10
            if factory.startswith("OPQ"):
                faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0)).niter = 5
            index.train(train)
        chosen = kind_of(factory)
        if chosen == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = 40
        params: dict = {"factory": factory}
        if "IVF" in factory:
            params["nlist"] = int(faiss.extract_index_ivf(index).nlist)
        from clipkit import __version__

        manifest = {"format_version": FORMAT_VERSION, "dim": d, "metric": metric, "kind": chosen,
                    "requested_kind": kind, "params": params, "count": 0, "model": model_info,
                    "clipkit_version": __version__, "trained_sha256": _trained_fingerprint(index)}
        return cls(index, manifest)

    def empty_copy(self) -> "EmbeddingIndex":
        """The same trained index with no vectors (a piece to fill), same manifest, no ids or metadata."""
        import faiss

        index = faiss.clone_index(self.index)
        index.reset()
        return EmbeddingIndex(index, {**self.manifest, "params": dict(self.manifest["params"]), "count": 0})

    @classmethod
    def build(cls, vectors, ids=None, kind: str = "auto", metric: str = "ip", *, model=None,
              metadata: dict | None = None, recall_target: float = 0.95, k: int = 10, num_queries: int = 500,
              max_memory: int | None = None, count: int | None = None, batch_size: int = 65536,
              train_size: int | None = None, seed: int = 0, progress: bool = False,
              modality: str | None = None) -> "EmbeddingIndex":
        """Build an index from an array, an EmbeddingFolder (or its path) or an iterator of chunks.

        ids: int64 per row (default: row numbers). model: a ClipModel whose identity and
        embed dim are recorded (for a folder, the one recorded by `clipkit embed` is used).
        metadata: {column: list} aligned with the rows (a folder's metadata by default).
        count: total rows when an iterator's length is unknown (helps `auto`).
        train_size: vectors the coarse quantizer / codes train on (a random sample of the first rows).
        max_memory: bytes `auto` may plan for (default: half the free RAM).
        modality: "img" or "text" embeddings of a folder (default: img when present).
        """
        from tqdm.auto import tqdm

        if not 0 < recall_target <= 1:
            raise ValueError(f"recall_target={recall_target}; expected a number in (0, 1]")
        if k < 1 or num_queries < 1 or batch_size < 1:
            raise ValueError(f"k={k}, num_queries={num_queries}, batch_size={batch_size}; expected positive ints")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size={train_size}; expected a positive int")
        start_time = time.time()
        rows = training_rows(vectors, count, kind, train_size, max_memory)
        src = _Source(vectors, batch_size, rows, count, modality)
        self = cls.trained(src.pool, kind, metric, count=src.size_hint, max_memory=max_memory,
                           train_size=train_size, seed=seed, model_info=_model_info(model, src.info, src.dim))
        tuning = self.kind != "flat"
        truth = GroundTruth(src.pool, num_queries, k, metric, seed) if tuning else None
        with tqdm(total=src.n, disable=not progress, unit="vec", desc=f"add {self.params['factory']}") as bar:
            for chunk in src.chunks():
                if truth is not None:
                    truth.add(chunk, int(self.index.ntotal))
                self.index.add(chunk)
                bar.update(len(chunk))
        added = len(self)
        self.ids = _checked_ids(ids, added)
        self.metadata = _checked_metadata(metadata if metadata is not None else src.metadata, added)
        if truth is not None:
            self.manifest["params"].update(truth.tune(self.index, self.kind, recall_target))
            self._apply_search_params()
        self.manifest.update(count=added, build_seconds=round(time.time() - start_time, 2))
        return self

    # ---------------------------------------------------------------- searching
    def _apply_search_params(self) -> None:
        import faiss

        ps = faiss.ParameterSpace()
        for name in ("nprobe", "efSearch"):
            if name in self.manifest.get("params", {}):
                ps.set_index_parameter(self.index, name, int(self.manifest["params"][name]))

    def set_search_params(self, **params) -> None:
        """Override nprobe / efSearch (kept in the manifest, so save() keeps them)."""
        for name, value in params.items():
            if name not in ("nprobe", "efSearch"):
                raise ValueError(f"unknown search parameter {name!r}; expected nprobe or efSearch")
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive int")
            self.manifest["params"][name] = value
        self._apply_search_params()

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest vectors per query row, k capped at the index size.

        Both arrays are (nq, min(k, len(index))); ids are -1 where an approximate index found fewer.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r}; expected a positive int")
        q = _as_matrix(queries, "queries", self.dim)
        check_finite(q, "queries")
        scores, positions = self.index.search(q, int(min(k, len(self)))) if len(self) else \
            (np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64))
        if self.ids is None:
            return scores, positions
        return scores, np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)

    def check_model(self, model) -> None:
        """Raise ValueError unless `model` is the one the indexed embeddings came from."""
        info = self.manifest.get("model")
        if model.embed_dim != self.dim:
            raise ValueError(f"model {model.config.name!r} embeds in dim {model.embed_dim}; this index holds "
                             f"dim-{self.dim} vectors" + (f" from model {info['identity']}" if info else ""))
        if info and info.get("identity") and info["identity"] != model.identity:
            raise ValueError(f"this index was built from model {info['identity']}; got model {model.identity}. "
                             f"Embed with the same model (or rebuild the index with this one)")

    def model(self, override: str | None = None, device: str = "auto"):
        """The model to query with: `override` (a directory or preset), else the one the manifest records."""
        from clipkit.model import resolve_model

        source = override or (self.manifest.get("model") or {}).get("source")
        if not source:
            raise ValueError("this index does not record its model; pass --model DIR")
        return resolve_model(source, device=device)

    def image(self, row: dict | None):
        """The indexed image behind a `lookup` row (an image file, or `key` inside a local shard), or None."""
        from clipkit.data.shards import read_member_image

        if not row or not row.get("path"):
            return None
        return read_member_image(row["path"], row.get("key"))

    def search_text(self, model, text: str | list[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        self.check_model(model)
        texts = [text] if isinstance(text, str) else list(text)
        return self.search(model.encode_texts(texts).numpy(), k)

    def search_image(self, model, image, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """`image`: a path, PIL image or uint8 array, or a list of them."""
        self.check_model(model)
        images = image if isinstance(image, (list, tuple)) else [image]
        return self.search(model.encode_images(images).numpy(), k)

    def lookup(self, ids) -> list:
        """Metadata rows ({column: value}) for ids (1-D -> list, 2-D -> list of lists); None for -1."""
        ids = np.asarray(ids)
        if ids.ndim == 2:
            return [self.lookup(row) for row in ids]
        if self.metadata is None:
            return [None if i < 0 else {"id": int(i)} for i in ids]
        if self.ids is not None and self._positions is None:
            self._positions = {int(v): p for p, v in enumerate(self.ids)}
        out = []
        for i in ids.tolist():
            pos = i if self.ids is None else self._positions.get(i, -1)
            if i < 0 or pos < 0 or pos >= len(self):
                out.append(None)
            else:
                out.append({"id": i, **{c: v[pos] for c, v in self.metadata.items()}})
        return out

    # ---------------------------------------------------------------- changing (clipkit.index_changes)
    def add(self, vectors, ids=None, metadata: dict | None = None, *, model=None, modality: str | None = None,
            batch_size: int = 65536) -> int:
        """Add vectors (an array, an EmbeddingFolder or its path, or chunks); returns how many (index_changes.add)."""
        from clipkit.index_changes import add

        return add(self, vectors, ids, metadata, model=model, modality=modality, batch_size=batch_size)

    def remove(self, ids) -> int:
        """Remove the vectors with these ids (flat and IVF kinds); returns how many (index_changes.remove)."""
        from clipkit.index_changes import remove

        return remove(self, ids)

    @classmethod
    def merge(cls, pieces) -> "EmbeddingIndex":
        """One index from pieces filled from the same trained index (see clipkit.index_pieces)."""
        from clipkit.index_pieces import merge

        return merge(pieces)

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> Path:
        """Write index.faiss (+ ids.npy, metadata.parquet) and, last, manifest.json; complete or not at all.

        A previous index at `directory` is replaced (only once the new one is complete);
        anything else there is refused unless `overwrite`. `inputs`: paths the index was
        built from, which `directory` must not be, be inside of, or contain.
        """
        import faiss

        directory = Path(directory)
        with staged_output(directory, FORMAT, inputs=inputs, overwrite=overwrite) as stage:
            tmp = stage.dir
            parts = {INDEX_NAME: len(self)}
            if self.ivfdata is not None:                     # on-disk lists: the file goes beside index.faiss
                _link_or_copy(self.ivfdata, tmp / IVFDATA_NAME)
                parts[IVFDATA_NAME] = None
            faiss.write_index(self.index, str(tmp / INDEX_NAME))
            if self.ids is not None:
                np.save(tmp / IDS_NAME, self.ids)
                parts[IDS_NAME] = len(self.ids)
            if self.metadata is not None:
                import pyarrow as pa
                import pyarrow.parquet as pq
                pq.write_table(pa.table(self.metadata), tmp / METADATA_NAME)
                parts[METADATA_NAME] = len(self)
            fields = {k: v for k, v in self.manifest.items() if k not in ("parts", "complete", "format", "written")}
            write_manifest(tmp, FORMAT, parts, **{**fields, "count": len(self), "format_version": FORMAT_VERSION})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = False, full_check: bool = False) -> "EmbeddingIndex":
        """Load a saved index; `mmap=True` maps the FAISS file instead of reading it into memory.

        Refuses a folder whose manifest is missing or does not match its files (sizes, rows;
        sha256 too with `full_check`).
        """
        import faiss

        directory = Path(directory)
        manifest = read_manifest(directory, FORMAT, fix=FIX, what="index", full=full_check)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{str(directory / MANIFEST_NAME)!r} has format_version "
                             f"{manifest.get('format_version')!r}; this clipkit reads {FORMAT_VERSION}; {FIX}")
        parts = manifest["parts"]
        flags = (faiss.IO_FLAG_MMAP if mmap else 0) | (faiss.IO_FLAG_ONDISK_SAME_DIR if IVFDATA_NAME in parts else 0)
        try:
            index = faiss.read_index(str(directory / INDEX_NAME), flags)
        except RuntimeError as e:
            raise ValueError(f"{str(directory / INDEX_NAME)!r} is not a readable FAISS index "
                             f"({str(e).strip().splitlines()[-1][:200]}); {FIX}") from None
        if index.d != manifest["dim"] or index.ntotal != manifest["count"]:
            raise ValueError(f"{str(directory)!r}: the FAISS file holds {index.ntotal} dim-{index.d} vectors but "
                             f"the manifest says {manifest['count']} dim-{manifest['dim']}; {FIX}")
        ids = metadata = None
        if IDS_NAME in parts:
            ids = np.load(directory / IDS_NAME)
        if METADATA_NAME in parts:
            import pyarrow.parquet as pq
            metadata = pq.read_table(directory / METADATA_NAME).to_pydict()
        for name, rows in ((IDS_NAME, None if ids is None else len(ids)),
                           (METADATA_NAME, None if metadata is None else len(next(iter(metadata.values()), [])))):
            if rows is not None and rows != index.ntotal:
                raise ValueError(f"{str(directory / name)!r} has {rows} rows for {index.ntotal} vectors; {FIX}")
        self = cls(index, manifest, ids, metadata)
        if IVFDATA_NAME in parts:
            self.ivfdata = directory / IVFDATA_NAME
        return self


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no copy of a large file on the same filesystem), else a copy."""
    import shutil

    if Path(src).resolve() == Path(dst).resolve():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
