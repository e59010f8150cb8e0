"""The library calls behind `clipkit serve`, with the checks a public endpoint needs (no HTTP here).

    engine = Engine(EmbeddingIndex.load("idx"), model, pipeline=None, config=ServeConfig())
    scores, ids = engine.searcher(Query(k=10, text="a red circle"))   # concurrent queries: one forward,
    scores, ids = engine.searcher(Query(k=10, vector=v))              # one FAISS call (micro-batched)
    engine.hits(scores, ids)                                          # [{id, score, caption, metadata, image_url}]

Everything a request can name is checked here and refused with an exception the web
layer turns into a 4xx: ValueError (400), TooLarge (413), UnknownId (404), TypeError
(422), batching.Overloaded (503). Nothing a request says can reach a file outside the
index's own data: images are looked up by id through `EmbeddingIndex.image`, `img:`
references of an expression may only name an id or the uploaded image, zero-shot
templates are named presets, never paths.
"""

from __future__ import annotations

import collections
import io
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipkit.images import to_rgb
from clipkit.io import atomic_file
from clipkit.serve.batching import BoundedPool, MicroBatcher

TEMPLATE_PRESETS = ("simple", "openai", "none")
HIDDEN_COLUMNS = ("path",)                    # never sent to clients (server file paths)
_ID_REF = re.compile(r"^#?(\d{1,18})$")


class TooLarge(ValueError):
    """An upload or image over a configured limit (HTTP 413)."""


class UnknownId(LookupError):
    """An id that is not in the index (HTTP 404)."""


@dataclass(frozen=True)
class ServeConfig:
    """Limits and queue sizes of a server (the `clipkit serve` flags)."""

    batching: bool = True             # micro-batch concurrent queries (False: one at a time)
    precision: str = "fp32"           # encoders' precision: fp32 | bf16 (autocast; float32 vectors out)
    max_batch: int = 64
    batch_window_ms: float = 2.0
    max_pending: int = 1024           # queued queries before 503
    gen_workers: int = 1
    gen_queue: int = 4                # waiting generation jobs before 503
    max_k: int = 1000
    max_query_chars: int = 1000
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_classes: int = 64
    max_num_images: int = 8
    max_steps: int = 250


@dataclass
class Query:
    """One search: a text to encode or a (D,) vector, k, an optional allowed-rows mask and an id to leave out."""

    k: int
    vector: np.ndarray | None = None
    text: str | None = None
    mask: np.ndarray | None = None
    exclude: int | None = None


class Engine:
    """An index, its model and (optionally) an unCLIP pipeline, shared by all requests."""

    def __init__(self, index, model, pipeline=None, config: ServeConfig = ServeConfig()):
        index.check_model(model)
        if len(index) == 0:
            raise ValueError("the index is empty; build it from some embeddings first")
        self.index, self.model, self.pipeline, self.config = index, model, pipeline, config
        batch = dict(max_batch=config.max_batch, window_ms=config.batch_window_ms,
                     max_pending=config.max_pending, enabled=config.batching)
        # Text queries are encoded inside the search batch: one hand-off between threads, not two.
        self.image_encoder = MicroBatcher(self._encode_images, name="image-encoder", **batch)
        self.searcher = MicroBatcher(self._search_batch, name="search", **batch)
        self.generator = BoundedPool(config.gen_workers, config.gen_queue) if pipeline is not None else None
        self._positions = None if index.ids is None else {int(v): p for p, v in enumerate(index.ids)}
        self._columns = {c: np.asarray(v, dtype=object) for c, v in (index.metadata or {}).items()
                         if c not in HIDDEN_COLUMNS}
        self._lock = threading.Lock()
        self.texts_encoded = 0
        self._images: collections.OrderedDict = collections.OrderedDict()
        self._masks: collections.OrderedDict = collections.OrderedDict()
        self._classifiers: collections.OrderedDict = collections.OrderedDict()

    def close(self) -> None:
        for worker in (self.image_encoder, self.searcher, self.generator):
            if worker is not None:
                worker.close()

    def warmup(self) -> None:
        """Encode once and embed the vocabulary, so the first request is not the slow one."""
        from clipkit.arithmetic import vocabulary_embeddings

        self.searcher(Query(k=1, text="warm up"))
        vocabulary_embeddings(self.model)

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        """What the page needs: counts, model, filterable columns with their values, limits."""
        from clipkit import __version__

        filters = {}
        for name, column in sorted(self._columns.items()):
            if name in ("id", "key", "caption"):
                continue
            values = set(column[:200_000].tolist())
            if 1 < len(values) <= 24 and all(isinstance(v, (str, int, float, bool)) for v in values):
                filters[name] = sorted(values, key=str)
        samplers = []
        if self.pipeline is not None:
            from clipkit.unclip import SAMPLERS
            samplers = list(SAMPLERS)
        c = self.config
        return {"count": len(self.index), "dim": self.index.dim, "kind": self.index.kind, "model": self.model.identity,
                "images": "path" in (self.index.metadata or {}), "filters": filters,
                "unclip": self.pipeline is not None, "samplers": samplers, "clipkit_version": __version__,
                "limits": {"max_k": min(c.max_k, len(self.index)), "max_query_chars": c.max_query_chars,
                           "max_upload_bytes": c.max_upload_bytes, "max_image_pixels": c.max_image_pixels,
                           "max_classes": c.max_classes, "max_num_images": c.max_num_images,
                           "max_steps": c.max_steps}}

    # ------------------------------------------------------------------ checks
    def check_text(self, text: str, what: str = "text") -> str:
        if not isinstance(text, str):
            raise TypeError(f"{what} must be a string; got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{what} is empty; type something to search for")
        if len(text) > self.config.max_query_chars:
            raise ValueError(f"{what} is {len(text):,} characters long; the limit is {self.config.max_query_chars:,}")
        return text.strip()

    def check_k(self, k: int) -> int:
        """k capped at the index size (and --max-k); k < 1 is an error."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r}; expected a whole number >= 1")
        return min(k, len(self.index), self.config.max_k)

    def read_image(self, data: bytes) -> Image.Image:
        """Upload bytes -> RGB image; refuses non-images, oversized files and decompression bombs."""
        limit = self.config.max_upload_bytes
        if not data:
            raise ValueError("the uploaded file is empty; choose an image file")
        if len(data) > limit:
            raise TooLarge(f"the upload is {len(data):,} bytes; the limit is {limit:,} bytes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.config.max_image_pixels:
                    raise TooLarge(f"the image is {width}x{height} = {width * height:,} pixels; the limit is "
                                   f"{self.config.max_image_pixels:,} (a decompression bomb?)")
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise TooLarge(f"the image is a decompression bomb (too many pixels): {e}") from None
        except UnidentifiedImageError:
            raise ValueError("the uploaded file is not an image (expected PNG, JPEG, WebP, GIF, BMP, ...)") from None
        except (OSError, SyntaxError, EOFError) as e:
            raise ValueError(f"the uploaded image could not be decoded: {e}") from None
        return to_rgb(image)

    def filter_mask(self, filters: dict | None) -> np.ndarray | None:
        """Rows whose metadata matches every {column: value or [values]} (None: no filter)."""
        if not filters:
            return None
        if not isinstance(filters, dict):
            raise TypeError(f"filters must be an object {{column: value}}; got {type(filters).__name__}")
        key = repr(sorted((c, repr(v)) for c, v in filters.items()))
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = np.ones(len(self.index), dtype=bool)
        for column, wanted in filters.items():
            if column not in self._columns:
                raise ValueError(f"filter on unknown column {column!r}; this index has {sorted(self._columns)}")
            values = wanted if isinstance(wanted, list) else [wanted]
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise TypeError(f"filter {column!r}: values must be strings, numbers or booleans; got {v!r}")
            allowed = set(values)
            mask &= np.fromiter((x in allowed for x in self._columns[column]), dtype=bool, count=len(mask))
        with self._lock:
            self._masks[key] = mask
            if len(self._masks) > 64:
                self._masks.popitem(last=False)
        return mask

    def position(self, item_id: int) -> int:
        pos = item_id if self._positions is None else self._positions.get(item_id, -1)
        if not isinstance(item_id, int) or not 0 <= pos < len(self.index):
            raise UnknownId(f"id {item_id} is not in the index (ids of this index: "
                            f"{'0..' + str(len(self.index) - 1) if self._positions is None else 'see search results'})")
        return pos

    def row(self, item_id: int) -> dict:
        self.position(item_id)
        return self.index.lookup(np.array([item_id], dtype=np.int64))[0]

    # ------------------------------------------------------------------ vectors
    def _encode_images(self, images: list) -> list[np.ndarray]:
        return list(self.model.encode_images(images, batch_size=max(1, len(images)),
                                             precision=self.config.precision).numpy())

    def item_image(self, item_id: int) -> Image.Image:
        row = self.row(item_id)
        try:
            image = self.index.image(row)
        except (OSError, ValueError) as e:                      # a moved or damaged shard / file
            raise UnknownId(f"the image of id {item_id} could not be read: {e}") from None
        if image is None:
            raise UnknownId(f"id {item_id} has no stored image (the index's metadata records no readable path)")
        return image

    def item_vector(self, item_id: int) -> np.ndarray:
        """The indexed vector of an item (from FAISS), or its image re-encoded when FAISS cannot give it back."""
        pos = self.position(item_id)
        try:
            return np.asarray(self.index.index.reconstruct(int(pos)), dtype=np.float32)
        except RuntimeError:                                    # e.g. IVF without a direct map
            return self.image_encoder(self.item_image(item_id))

    def expression_vector(self, expression: str, model=None, upload: Image.Image | None = None) -> np.ndarray:
        """Evaluate an arithmetic expression where img:"42" is indexed item 42 and img:"upload" the upload."""
        from clipkit.arithmetic import evaluate_expression, parse_expression, references

        text = self.check_text(expression, "expression")
        refs = references(parse_expression(text))
        with tempfile.TemporaryDirectory(prefix="clipkit-serve-") as scratch:
            written: set[str] = set()
            for kind, value, pos in refs:
                if kind != "img" or value in written:
                    continue
                if value == "upload":
                    if upload is None:
                        raise ValueError(f'img:"upload" at position {pos} needs an uploaded image with the request')
                    image = upload
                elif (match := _ID_REF.match(value)) is not None:
                    image = self.item_image(int(match.group(1)))
                else:
                    raise ValueError(f"img:{value!r} at position {pos}: the server reads only indexed items by id "
                                     f'(img:"42") or the uploaded image (img:"upload"), never a path')
                with atomic_file(Path(scratch) / value) as f:
                    image.save(f, format="PNG")
                written.add(value)
            vector = evaluate_expression(model or self.model, text, base_dir=scratch)
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise ValueError("the expression evaluates to a zero vector; there is nothing to search for")
        return (vector / norm).astype(np.float32)

    def nearest_words(self, vector: np.ndarray, k: int = 5) -> list[dict]:
        from clipkit.arithmetic import nearest_words

        return [{"word": w, "score": round(s, 4)} for w, s in nearest_words(self.model, vector, k=k)]

    # ------------------------------------------------------------------ search
    def _search_batch(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Encode the batch's texts in one forward, then search its unfiltered queries in one FAISS call."""
        texts = [q for q in queries if q.vector is None]
        if texts:
            vectors = self.model.encode_texts([q.text for q in texts], batch_size=len(texts),
                                              precision=self.config.precision).numpy()
            for q, v in zip(texts, vectors):
                q.vector = v
            self.texts_encoded += len(texts)
        out: list = [None] * len(queries)
        plain = [i for i, q in enumerate(queries) if q.mask is None]
        if plain:
            kk = min(len(self.index), max(queries[i].k + (queries[i].exclude is not None) for i in plain))
            scores, ids = self.index.search(np.stack([queries[i].vector for i in plain]), kk)
            for row, i in enumerate(plain):
                out[i] = self._keep(scores[row], ids[row], queries[i])
        for i, q in enumerate(queries):
            if q.mask is not None:
                out[i] = self._search_filtered(q)
        return out

    def _keep(self, scores, ids, q: Query):
        ok = ids >= 0
        if q.exclude is not None:
            ok &= ids != q.exclude
        if q.mask is not None:
            pos = ids if self._positions is None else np.array([self._positions.get(int(i), 0) for i in ids])
            ok &= q.mask[np.clip(pos, 0, len(q.mask) - 1)]
        return scores[ok][:q.k], ids[ok][:q.k]

    def _search_filtered(self, q: Query):
        """Search wider until k rows pass the filter (or the whole index was searched)."""
        n = len(self.index)
        want = min(q.k, int(q.mask.sum()))
        kk = min(n, max(4 * q.k, 64))
        while True:
            scores, ids = self.index.search(q.vector[None], kk)
            kept = self._keep(scores[0], ids[0], q)
            if len(kept[1]) >= want or kk >= n:
                return kept
            kk = min(n, kk * 4)

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[dict]:
        rows = self.index.lookup(ids)
        has_images = "path" in (self.index.metadata or {})
        out = []
        for score, item_id, row in zip(scores.tolist(), ids.tolist(), rows):
            row = dict(row or {"id": item_id})
            shown = {c: v for c, v in row.items() if c not in HIDDEN_COLUMNS + ("id", "caption", "key")}
            out.append({"id": int(item_id), "score": round(float(score), 5), "key": row.get("key"),
                        "caption": row.get("caption"), "metadata": shown,
                        "image_url": f"/image/{item_id}" if has_images and row.get("path") else None})
        return out

    def image_png(self, item_id: int, max_side: int = 512) -> bytes:
        with self._lock:
            if item_id in self._images:
                self._images.move_to_end(item_id)
                return self._images[item_id]
        image = self.item_image(item_id)
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        with self._lock:
            self._images[item_id] = data
            if len(self._images) > 2048:
                self._images.popitem(last=False)
        return data

    # ------------------------------------------------------------------ zero-shot
    def zero_shot(self, vector: np.ndarray, classes: list[str], templates: str = "simple") -> list[dict]:
        from clipkit.zeroshot import ZeroShotClassifier

        if templates not in TEMPLATE_PRESETS:
            raise ValueError(f"templates={templates!r} is not one of {TEMPLATE_PRESETS}")
        classes = [c.strip() for c in classes if isinstance(c, str) and c.strip()]
        if not 2 <= len(classes) <= self.config.max_classes:
            raise ValueError(f"give between 2 and {self.config.max_classes} class names; got {len(classes)}")
        too_long = [c for c in classes if len(c) > 200]
        if too_long:
            raise ValueError(f"class name {too_long[0][:40]!r}... is over 200 characters")
        key = (tuple(classes), templates)
        with self._lock:
            clf = self._classifiers.get(key)
        if clf is None:
            clf = ZeroShotClassifier(self.model, classes, templates=templates)
            with self._lock:
                self._classifiers[key] = clf
                if len(self._classifiers) > 16:
                    self._classifiers.popitem(last=False)
        proba = clf.predict_proba(vector[None])[0]
        order = np.argsort(-proba)
        return [{"class": classes[i], "probability": round(float(proba[i]), 5)} for i in order]

    # ------------------------------------------------------------------ generation
    def check_generation(self, num_images: int, steps: int, sampler: str, guidance: float) -> None:
        from clipkit.unclip import SAMPLERS

        if self.pipeline is None:
            raise ValueError("this server has no unCLIP pipeline; start it with --unclip PIPELINE to generate")
        c = self.config
        if not 1 <= num_images <= c.max_num_images:
            raise ValueError(f"num_images={num_images}; expected 1..{c.max_num_images}")
        if not 1 <= steps <= c.max_steps:
            raise ValueError(f"steps={steps}; expected 1..{c.max_steps}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not one of {tuple(SAMPLERS)}")
        if not 0 <= guidance <= 50:
            raise ValueError(f"guidance={guidance}; expected a number in 0..50")

    def generation_vector(self, expression: str | None, item_id: int | None, image: Image.Image | None) -> np.ndarray:
        """The image embedding to decode (expression, indexed item or uploaded image) in the pipeline's CLIP space."""
        clip = self.pipeline.clip
        same = clip.identity == self.model.identity
        if expression is not None:
            return self.expression_vector(expression, clip, image)
        if item_id is not None:
            if same:
                return self.item_vector(item_id)
            image = self.item_image(item_id)
        return self.image_encoder(image) if same else clip.encode_images([image]).numpy()[0]

    def generate(self, *, text: str | None = None, vector: np.ndarray | None = None, num_images: int = 4,
                 steps: int = 25, sampler: str = "ddim", guidance: float = 3.0,
                 negative_prompt: str | None = None, seed: int = 0) -> list[Image.Image]:
        """Text -> prior -> decoder, or an image-embedding vector -> decoder. Runs in the generation pool."""
        import torch

        pipe = self.pipeline
        if text is not None:
            return pipe.generate(text, num_images=num_images, steps=steps, sampler=sampler,
                                 negative_prompt=negative_prompt, seed=seed, guidance_scale=guidance)
        if negative_prompt:
            raise ValueError("negative_prompt works with text prompts only (it goes through the prior)")
        embeddings = torch.as_tensor(np.asarray(vector, dtype=np.float32))[None].expand(num_images, -1)
        return pipe.decode(embeddings, steps=steps, sampler=sampler, guidance_scale=guidance, seed=seed)
