"""The index's items as a client sees them: rows by id, images by id, filter masks, hits (no HTTP here).

    catalog = Catalog(index)
    catalog.row(42)                       # {"id": 42, "caption": ..., ...}; UnknownId (404) for an id not indexed
    catalog.image(42)                     # the indexed image (PIL); UnknownId when it has none or cannot be read
    catalog.png(42)                       # the same as PNG bytes, at most 512 px a side (the last 2,048 cached)
    catalog.mask({"shape": ["circle", "star"], "hat": True})   # bool mask over row positions, for index.search
    catalog.hits(scores, ids)             # [{id, score, key, caption, metadata, image_url}] for the JSON answer
    catalog.filters()                     # {column: values} worth offering as filters on the page

A request can name ids and filters, never paths: images are read through
`EmbeddingIndex.image` from the rows the index holds, and the `path` column is
never sent to clients. Ids are checked with the index's own `positions`; masks and
PNGs are cached per catalog (functools.lru_cache; a refused request is not cached).
"""

from __future__ import annotations

import contextlib
import functools
import io

import numpy as np
from PIL import Image

from clipkit.serve.errors import ClientError, UnknownId

HIDDEN_COLUMNS = ("path",)  # never sent to clients (server file paths)
FILTER_VALUES = 24  # a column is offered as a filter when it has 2..24 values


class Catalog:
    """Rows, images, filter masks and hits of one index; `timer` (optional) times `hits` (a Prometheus child)."""

    def __init__(self, index, timer=None):
        self.index, self.timer = index, timer
        self.has_images = "path" in (index.metadata or {})
        self._columns = {
            c: np.asarray(v, dtype=object) for c, v in (index.metadata or {}).items() if c not in HIDDEN_COLUMNS
        }
        self._mask = functools.lru_cache(maxsize=64)(self._build_mask)
        self._png = functools.lru_cache(maxsize=2048)(self._render_png)

    def row(self, item_id: int) -> dict:
        """The metadata row of an indexed id; UnknownId (404) for any other."""
        ids = np.array([item_id], dtype=np.int64) if isinstance(item_id, int) and abs(item_id) < 2**63 else None
        if ids is None or self.index.positions(ids)[0] < 0:
            raise UnknownId(f"id {item_id} is not in the index (search results show the ids it holds)")
        return self.index.lookup(ids)[0]

    def image(self, item_id: int) -> Image.Image:
        row = self.row(item_id)
        try:
            image = self.index.image(row)
        except (OSError, ValueError) as e:  # a moved or damaged shard / file
            raise UnknownId(f"the image of id {item_id} could not be read: {e}") from None
        if image is None:
            raise UnknownId(f"id {item_id} has no stored image (the index's metadata records no readable path)")
        return image

    def png(self, item_id: int, max_side: int = 512) -> bytes:
        """An indexed image as PNG bytes, at most `max_side` a side."""
        return self._png(item_id, max_side)

    def _render_png(self, item_id: int, max_side: int) -> bytes:
        image = self.image(item_id)
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def mask(self, filters: dict | None) -> np.ndarray | None:
        """Rows whose metadata matches every {column: value or [values]} (None: no filter); read-only, shared."""
        if not filters:
            return None
        if not isinstance(filters, dict):
            raise ClientError(422, f"filters must be an object {{column: value}}; got {type(filters).__name__}")
        key = []
        for column in sorted(filters):
            if column not in self._columns:
                raise ClientError(400, f"filter on unknown column {column!r}; this index has {sorted(self._columns)}")
            wanted = filters[column]
            values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise ClientError(422, f"filter {column!r}: values must be strings, numbers or booleans; got {v!r}")
            key.append((column, values))
        return self._mask(tuple(key))

    def _build_mask(self, key: tuple) -> np.ndarray:
        mask = np.ones(len(self.index), dtype=bool)
        for column, values in key:
            allowed = set(values)
            mask &= np.fromiter((x in allowed for x in self._columns[column]), dtype=bool, count=len(mask))
        mask.flags.writeable = False  # one object for every query with these filters
        return mask

    def filters(self) -> dict[str, list]:
        """Columns worth a filter on the page (2..24 plain values among the first 200,000 rows) and their values."""
        out = {}
        for name, column in sorted(self._columns.items()):
            if name in ("id", "key", "caption"):
                continue
            values = set(column[:200_000].tolist())
            if 1 < len(values) <= FILTER_VALUES and all(isinstance(v, (str, int, float, bool)) for v in values):
                out[name] = sorted(values, key=str)
        return out

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[dict]:
        """One search answer's results: id, score, key, caption, the other metadata, the image's URL."""
        out = []
        with self.timer.time() if self.timer is not None else contextlib.nullcontext():
            for score, item_id, row in zip(scores.tolist(), ids.tolist(), self.index.lookup(ids)):
                row = dict(row or {"id": item_id})
                shown = {c: v for c, v in row.items() if c not in HIDDEN_COLUMNS + ("id", "caption", "key")}
                out.append(
                    {
                        "id": int(item_id),
                        "score": round(float(score), 5),
                        "key": row.get("key"),
                        "caption": row.get("caption"),
                        "metadata": shown,
                        "image_url": f"/image/{item_id}" if self.has_images and row.get("path") else None,
                    }
                )
        return out
