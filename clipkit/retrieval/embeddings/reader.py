"""Reading an embedding folder (layout.py) back in chunks: our streaming reader.

    from clipkit.retrieval.embeddings.reader import EmbeddingFolder, read_embeddings
    folder = EmbeddingFolder("OUT")                                # every part's sha256 checked (verify=False: sizes)
    folder.count, folder.dim, folder.modalities, folder.info     # 20000, 128, ("img", "text"), {manifest}
    for vectors, meta in folder.chunks("img", chunk_size=65536):  # float32 (n, D), {"key": [...], "caption": ...}
        ...
    for img, txt, meta in folder.pairs(chunk_size=4096):          # aligned image / caption embeddings (prior training)
        ...
    folder.load("text")                                            # everything as one (N, D) float32 array
    folder.metadata(columns=["key", "caption"])                   # all metadata as {column: list}
    read_embeddings("OUT", "img")                                  # = EmbeddingFolder("OUT").chunks("img")

It refuses a folder whose manifest is missing or does not match its parts (an
interrupted or mixed output, a missing part, another size, and unless
`verify=False` another sha256: same-size damage such as reordered rows). The
hash costs ~0.07 s per 100 MB of parts (~1.5 GB/s on one core); `verify=False`
(`--no-verify` on the commands that read embedding folders) is the opt-out for
very large folders. Chunks never span two parts (a chunk has at most
`chunk_size` rows).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from clipkit.io import read_manifest
from clipkit.retrieval.embeddings.layout import FIX, FORMAT, MODALITIES, PART_NAME


class EmbeddingFolder:
    """A folder in clip-retrieval's layout (layout.py): counts, dims, and chunked reads (see module docstring)."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.root = Path(path)
        self.info: dict = read_manifest(self.root, FORMAT, fix=FIX, what="embedding folder", verify=verify)
        listed: dict[str, dict[int, int]] = {"img": {}, "text": {}, "metadata": {}}  # kind -> part -> rows
        self._files: dict[tuple[str, int], Path] = {}
        for rel, record in self.info["parts"].items():
            m = PART_NAME.match(Path(rel).name)
            if not m or Path(rel).parent.as_posix() != m.group(1):
                raise ValueError(
                    f"{str(self.root)!r}: its manifest lists {rel!r}, which is not an embedding part; {FIX}"
                )
            kind, i = m.group(1).replace("_emb", ""), int(m.group(2))
            listed[kind][i] = record.get("rows")
            self._files[(kind, i)] = self.root / rel
        for sub in ("img_emb", "text_emb", "metadata"):
            for p in (self.root / sub).glob("*"):
                if PART_NAME.match(p.name) and p.relative_to(self.root).as_posix() not in self.info["parts"]:
                    raise ValueError(
                        f"{str(self.root)!r} holds {p.relative_to(self.root).as_posix()!r}, which its "
                        f"manifest does not list (files from another run mixed in?); remove it or {FIX}"
                    )
        self.modalities = tuple(m for m in MODALITIES if listed[m])
        self.has_metadata = bool(listed["metadata"])
        kinds = (*self.modalities, *(("metadata",) if self.has_metadata else ()))
        self.parts = sorted(set().union(*(listed[k] for k in kinds))) if kinds else []
        self._rows: list[int] = []
        self._dims: dict[str, int] = {}
        for i in self.parts:
            counts = {}
            for kind in kinds:
                if i not in listed[kind]:
                    raise ValueError(f"{str(self.root)!r}: part {i} has no {kind} file; {FIX}")
                got = self._file_rows(kind, i)
                if got != listed[kind][i]:
                    raise ValueError(
                        f"{str(self._files[(kind, i)])!r} holds {got} rows but the manifest says "
                        f"{listed[kind][i]}; {FIX}"
                    )
                counts[kind] = got
            self._rows.append(next(iter(counts.values())))
        if self.count != self.info.get("count"):
            raise ValueError(
                f"{str(self.root)!r}: its parts hold {self.count} rows but the manifest says "
                f"{self.info.get('count')}; {FIX}"
            )

    def _file_rows(self, kind: str, i: int) -> int:
        path = self._files[(kind, i)]
        if kind == "metadata":
            return pq.ParquetFile(path).metadata.num_rows
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2:
            raise ValueError(f"{str(path)!r} has shape {arr.shape}; expected (n, D); {FIX}")
        self._dims.setdefault(kind, arr.shape[1])
        return arr.shape[0]

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
        return (
            f"EmbeddingFolder({str(self.root)!r}, count={self.count}, modalities={self.modalities}, "
            f"parts={len(self.parts)})"
        )

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"modality={modality!r} is not in {str(self.root)!r}; available: {self.modalities}")

    def chunks(
        self,
        modality: str = "img",
        chunk_size: int = 65536,
        metadata: bool = True,
        columns: Sequence[str] | None = None,
    ) -> Iterator[tuple[np.ndarray, dict | None]]:
        """Yield (float32 (n, D) vectors, {column: list} or None) chunks in row order."""
        for arrays, meta in self._iterate((modality,), chunk_size, metadata, columns):
            yield arrays[0], meta

    def pairs(
        self, chunk_size: int = 65536, metadata: bool = False, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict | None]]:
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
            arrays = [np.load(self._files[(m, part)], mmap_mode="r") for m in modalities]
            table = None
            for start in range(0, rows, chunk_size):
                stop = min(rows, start + chunk_size)
                meta = None
                if metadata:
                    if table is None:
                        table = pq.read_table(self._files[("metadata", part)], columns=columns)
                    meta = table.slice(start, stop - start).to_pydict()
                yield [np.ascontiguousarray(a[start:stop], dtype=np.float32) for a in arrays], meta

    def load(self, modality: str = "img") -> np.ndarray:
        """All embeddings of one modality as one float32 (N, D) array."""
        self._check_modality(modality)
        out = np.empty((self.count, self._dims[modality]), dtype=np.float32)
        row = 0
        for vectors, _ in self.chunks(modality, chunk_size=1 << 20, metadata=False):
            out[row : row + len(vectors)] = vectors
            row += len(vectors)
        return out

    def metadata(self, columns: Sequence[str] | None = None) -> dict[str, list]:
        """All metadata rows as {column: list} (columns missing in some part are filled with None)."""
        if not self.has_metadata:
            raise ValueError(f"{str(self.root)!r} has no metadata parts")
        out: dict[str, list] = {}
        done = 0
        for part, rows in zip(self.parts, self._rows):
            schema = pq.read_schema(self._files[("metadata", part)])
            cols = None if columns is None else [c for c in columns if c in schema.names]
            data = pq.read_table(self._files[("metadata", part)], columns=cols).to_pydict()
            for name in set(out) | set(data):
                out.setdefault(name, [None] * done).extend(data.get(name, [None] * rows))
            done += rows
        return out


def read_embeddings(
    path: str | os.PathLike, modality: str = "img", chunk_size: int = 65536, metadata: bool = True
) -> Iterator[tuple[np.ndarray, dict | None]]:
    """Stream (float32 vectors, metadata) chunks from an embedding folder."""
    return EmbeddingFolder(path).chunks(modality, chunk_size=chunk_size, metadata=metadata)
