"""The library calls behind `clipkit serve`, with the checks a public endpoint needs (no HTTP here).

    engine = Engine(EmbeddingIndex.load("idx"), model, pipeline=None, config=ServeConfig())
    scores, ids = engine.searcher(Query(k=10, text="a red circle"))   # concurrent queries: one forward,
    scores, ids = engine.searcher(Query(k=10, vector=v))              # one index search (micro-batched)
    engine.catalog.hits(scores, ids)                                  # [{id, score, caption, metadata, image_url}]
    engine.catalog.mask({"shape": "circle"})                          # Query(..., mask=...) searches those rows

Everything a request can name is checked here or in the catalog (ids, filters:
serve/catalog.py), and only these checks raise `ClientError` (serve/errors.py: the
web layer answers it with its 4xx and message); any other exception is a bug and
becomes a 500. Nothing a request says can reach a file outside the index's own
data: images are looked up by id, `img:` references of an expression may only name
an id or the uploaded image, zero-shot templates are named presets, never paths.

Each stage (encode_text, encode_image, search, metadata, generate) is timed into
`engine.stage_seconds`, a Prometheus histogram that every app over this engine exposes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipkit import __version__
from clipkit.images import to_rgb
from clipkit.retrieval.arithmetic import (
    ExpressionError,
    evaluate_expression,
    nearest_words,
    parse_expression,
    references,
    vocabulary_embeddings,
)
from clipkit.retrieval.zeroshot import ZeroShotClassifier
from clipkit.serve.batching import BoundedPool, MicroBatcher
from clipkit.serve.catalog import Catalog
from clipkit.serve.errors import ClientError, TooLarge
from clipkit.serve.metrics import stage_histogram
from clipkit.unclip import SAMPLERS

TEMPLATE_PRESETS = ("simple", "openai", "none")
_ID_REF = re.compile(r"^#?(\d{1,18})$")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and queue sizes of a server (the `clipkit serve` flags)."""

    batching: bool = True  # micro-batch concurrent queries (False: one at a time)
    precision: str = "fp32"  # encoders' precision: fp32 | bf16 (autocast; float32 vectors out)
    max_batch: int = 64
    batch_window_ms: float = 2.0
    max_pending: int = 1024  # queued queries before 503
    gen_workers: int = 1
    gen_queue: int = 4  # waiting generation jobs before 503
    max_k: int = 1000
    max_query_chars: int = 1000
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_classes: int = 64
    max_num_images: int = 8
    max_steps: int = 250


@dataclass
class Query:
    """One search: a (D,) vector, a text or an image to encode, k, an optional allowed-rows mask, an id to leave out."""

    k: int
    vector: np.ndarray | None = None
    text: str | None = None
    mask: np.ndarray | None = None
    exclude: int | None = None
    image: Image.Image | None = None


class Engine:
    """An index, its model and (optionally) an unCLIP pipeline, shared by all requests."""

    def __init__(self, index, model, pipeline=None, config: ServeConfig = ServeConfig()):
        index.check_model(model)
        if len(index) == 0:
            raise ValueError("the index is empty; build it from some embeddings first")
        self.index, self.model, self.pipeline, self.config = index, model, pipeline, config
        self.stage_seconds = stage_histogram()
        self.in_flight = 0  # queries being served (`serving()`): who may still join a batch
        batching = functools.partial(
            MicroBatcher,
            max_batch=config.max_batch,
            window_ms=config.batch_window_ms,
            max_pending=config.max_pending,
            enabled=config.batching,
            expected=lambda: self.in_flight,
        )
        # Text and image queries are encoded inside the search batch: one hand-off between threads, not two.
        # The image encoder alone serves zero-shot and generation.
        self.image_encoder = batching(self._encode_images, name="image-encoder")
        self.searcher = batching(self._search_batch, name="search")
        self.generator = BoundedPool(config.gen_workers, config.gen_queue) if pipeline is not None else None
        self.catalog = Catalog(index, timer=self.stage_seconds.labels("metadata"))
        self.texts_encoded = 0
        self._classifier = functools.lru_cache(maxsize=16)(self._build_classifier)  # one per class list

    def close(self) -> None:
        for worker in (self.image_encoder, self.searcher, self.generator):
            if worker is not None:
                worker.close()

    def warmup(self) -> None:
        """Encode once and embed the vocabulary, so the first request is not the slow one."""
        self.searcher(Query(k=1, text="warm up"))
        vocabulary_embeddings(self.model)

    def _stage(self, name: str):
        return self.stage_seconds.labels(name).time()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count a query in `in_flight` while it is served (call from the event loop thread, the only writer)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        """What the page needs: counts, model, filterable columns with their values, limits."""
        c = self.config
        return {
            "count": len(self.index),
            "dim": self.index.dim,
            "kind": self.index.kind,
            "model": self.model.identity,
            "images": self.catalog.has_images,
            "filters": self.catalog.filters(),
            "unclip": self.pipeline is not None,
            "samplers": list(SAMPLERS) if self.pipeline else [],
            "clipkit_version": __version__,
            "limits": {
                "max_k": min(c.max_k, len(self.index)),
                "max_query_chars": c.max_query_chars,
                "max_upload_bytes": c.max_upload_bytes,
                "max_image_pixels": c.max_image_pixels,
                "max_classes": c.max_classes,
                "max_num_images": c.max_num_images,
                "max_steps": c.max_steps,
            },
        }

    # ------------------------------------------------------------------ input checks (the only ClientError raisers)
    def check_text(self, text: str, what: str = "text") -> str:
        if not isinstance(text, str):
            raise ClientError(422, f"{what} must be a string; got {type(text).__name__}")
        if not text.strip():
            raise ClientError(400, f"{what} is empty; type something to search for")
        if len(text) > self.config.max_query_chars:
            raise ClientError(
                400, f"{what} is {len(text):,} characters long; the limit is {self.config.max_query_chars:,}"
            )
        return text.strip()

    def check_k(self, k: int) -> int:
        """k capped at the index size (and --max-k); k < 1 is an error."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ClientError(422, f"k={k!r}; expected a whole number >= 1")
        return min(k, len(self.index), self.config.max_k)

    def check_generation(self, num_images: int, steps: int, sampler: str, guidance: float) -> None:
        if self.pipeline is None:
            raise ClientError(400, "this server has no unCLIP pipeline; start it with --unclip PIPELINE to generate")
        c = self.config
        if not 1 <= num_images <= c.max_num_images:
            raise ClientError(400, f"num_images={num_images}; expected 1..{c.max_num_images}")
        if not 1 <= steps <= c.max_steps:
            raise ClientError(400, f"steps={steps}; expected 1..{c.max_steps}")
        if sampler not in SAMPLERS:
            raise ClientError(400, f"sampler={sampler!r} is not one of {tuple(SAMPLERS)}")
        if not 0 <= guidance <= 50:
            raise ClientError(400, f"guidance={guidance}; expected a number in 0..50")

    def read_image(self, data: bytes) -> Image.Image:
        """Upload bytes -> RGB image; refuses non-images, oversized files and decompression bombs."""
        limit = self.config.max_upload_bytes
        if not data:
            raise ClientError(400, "the uploaded file is empty; choose an image file")
        if len(data) > limit:
            raise TooLarge(f"the upload is {len(data):,} bytes; the limit is {limit:,} bytes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.config.max_image_pixels:
                    raise TooLarge(
                        f"the image is {width}x{height} = {width * height:,} pixels; the limit is "
                        f"{self.config.max_image_pixels:,} (a decompression bomb?)"
                    )
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise TooLarge(f"the image is a decompression bomb (too many pixels): {e}") from None
        except UnidentifiedImageError:
            raise ClientError(
                400, "the uploaded file is not an image (expected PNG, JPEG, WebP, GIF, BMP, ...)"
            ) from None
        except (OSError, SyntaxError, EOFError) as e:
            raise ClientError(400, f"the uploaded image could not be decoded: {e}") from None
        return to_rgb(image)

    # ------------------------------------------------------------------ items and vectors
    def item_vector(self, item_id: int) -> np.ndarray:
        """The indexed vector of an item, or its image re-encoded where the index cannot give it back."""
        self.catalog.row(item_id)
        try:
            return self.index.vectors([item_id])[0]
        except RuntimeError:  # an IVF index without a direct map
            return self.image_encoder(self.catalog.image(item_id))

    def _encode_images(self, images: list) -> list[np.ndarray]:
        with self._stage("encode_image"):
            return list(
                self.model.encode_images(
                    images, batch_size=max(1, len(images)), precision=self.config.precision
                ).numpy()
            )

    def expression_vector(self, expression: str, model=None, upload: Image.Image | None = None) -> np.ndarray:
        """Evaluate an arithmetic expression where img:"42" is indexed item 42 and img:"upload" the upload.

        An indexed item stands for its stored vector (no image is read or encoded) when the expression is
        evaluated with the index's own model and the index can give vectors back; otherwise (the unCLIP
        pipeline's CLIP is another model, an IVF index without a direct map) its image is encoded."""
        text = self.check_text(expression, "expression")
        model = model or self.model
        try:
            refs = references(parse_expression(text))
        except ExpressionError as e:
            raise ClientError(400, str(e)) from None
        images: dict[str, object] = {}
        for kind, value, pos in refs:
            if kind != "img" or value in images:
                continue
            if value == "upload":
                if upload is None:
                    raise ClientError(400, f'img:"upload" at position {pos} needs an uploaded image with the request')
                images[value] = upload
            elif (match := _ID_REF.match(value)) is not None:
                images[value] = self._item_reference(int(match.group(1)), model)
            else:
                raise ClientError(
                    400,
                    f"img:{value!r} at position {pos}: the server reads only indexed items "
                    f'by id (img:"42") or the uploaded image (img:"upload"), never a path',
                )
        try:
            vector = evaluate_expression(model, text, images=images)
        except ExpressionError as e:  # type errors: a vector times a vector, ...
            raise ClientError(400, str(e)) from None
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise ClientError(400, "the expression evaluates to a zero vector; there is nothing to search for")
        return (vector / norm).astype(np.float32)

    def _item_reference(self, item_id: int, model):
        """What img:"ID" stands for: the stored vector (same model as the index), else the item's image."""
        self.catalog.row(item_id)  # 404 for an id not in the index
        if model is self.model or model.identity == self.model.identity:
            with contextlib.suppress(RuntimeError):  # an IVF index without a direct map
                return self.index.vectors([item_id])[0]
        return self.catalog.image(item_id)

    def nearest_words(self, vector: np.ndarray, k: int = 5) -> list[dict]:
        return [{"word": w, "score": round(s, 4)} for w, s in nearest_words(self.model, vector, k=k)]

    # ------------------------------------------------------------------ search
    def _search_batch(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Encode the batch's texts in one forward, its images in another, then one index search per filter."""
        texts = [q for q in queries if q.vector is None and q.text is not None]
        if texts:
            with self._stage("encode_text"):
                vectors = self.model.encode_texts(
                    [q.text for q in texts], batch_size=len(texts), precision=self.config.precision
                ).numpy()
            for q, v in zip(texts, vectors):
                q.vector = v
            self.texts_encoded += len(texts)
        images = [q for q in queries if q.vector is None and q.image is not None]
        if images:
            for q, v in zip(images, self._encode_images([q.image for q in images])):
                q.vector = v
        groups: dict[int, list[int]] = {}  # the same filters share one cached mask object
        for i, q in enumerate(queries):
            groups.setdefault(id(q.mask), []).append(i)
        out: list = [None] * len(queries)
        for members in groups.values():
            kk = max(queries[i].k + (queries[i].exclude is not None) for i in members)
            vectors = [queries[i].vector for i in members]
            assert all(v is not None for v in vectors), "every query was encoded above"
            with self._stage("search"):
                scores, ids = self.index.search(np.stack(vectors), kk, mask=queries[members[0]].mask)
            for row, i in enumerate(members):
                q = queries[i]
                keep = (ids[row] >= 0) & (ids[row] != (-1 if q.exclude is None else q.exclude))
                out[i] = scores[row][keep][: q.k], ids[row][keep][: q.k]
        return out

    # ------------------------------------------------------------------ zero-shot
    def zero_shot(self, vector: np.ndarray, classes: list[str], templates: str = "simple") -> list[dict]:
        if templates not in TEMPLATE_PRESETS:
            raise ClientError(400, f"templates={templates!r} is not one of {TEMPLATE_PRESETS}")
        classes = [c.strip() for c in classes if isinstance(c, str) and c.strip()]
        if not 2 <= len(classes) <= self.config.max_classes:
            raise ClientError(400, f"give between 2 and {self.config.max_classes} class names; got {len(classes)}")
        too_long = [c for c in classes if len(c) > 200]
        if too_long:
            raise ClientError(400, f"class name {too_long[0][:40]!r}... is over 200 characters")
        proba = self._classifier(tuple(classes), templates).predict_proba(vector[None])[0]
        order = np.argsort(-proba)
        return [{"class": classes[i], "probability": round(float(proba[i]), 5)} for i in order]

    def _build_classifier(self, classes: tuple[str, ...], templates: str) -> ZeroShotClassifier:
        return ZeroShotClassifier(self.model, list(classes), templates=templates)

    # ------------------------------------------------------------------ generation
    def generation_vector(self, expression: str | None, item_id: int | None, image: Image.Image | None) -> np.ndarray:
        """The image embedding to decode (expression, indexed item or uploaded image) in the pipeline's CLIP space."""
        clip = self.pipeline.clip
        same = clip.identity == self.model.identity
        if expression is not None:
            return self.expression_vector(expression, clip, image)
        if item_id is not None:
            if same:
                return self.item_vector(item_id)
            image = self.catalog.image(item_id)
        return self.image_encoder(image) if same else clip.encode_images([image]).numpy()[0]

    def generate(
        self,
        *,
        text: str | None = None,
        vector: np.ndarray | None = None,
        num_images: int = 4,
        steps: int = 25,
        sampler: str = "ddim",
        guidance: float = 3.0,
        negative_prompt: str | None = None,
        seed: int = 0,
    ) -> list[Image.Image]:
        """Text -> prior -> decoder, or an image-embedding vector -> decoder (-> the pipeline's upsampler, when it
        has one: a cascade serves its full resolution). Runs in the generation pool."""
        if text is None and negative_prompt:
            raise ClientError(400, "negative_prompt works with text prompts only (it goes through the prior)")
        pipe = self.pipeline
        upsample = pipe.upsampler is not None and pipe.decoder is not None
        with self._stage("generate"):
            if text is not None:
                return pipe.generate(
                    text,
                    num_images=num_images,
                    steps=steps,
                    sampler=sampler,
                    negative_prompt=negative_prompt,
                    seed=seed,
                    guidance_scale=guidance,
                    upsample=upsample,
                )
            embeddings = torch.as_tensor(np.asarray(vector, dtype=np.float32))[None].expand(num_images, -1)
            return pipe.decode(
                embeddings, steps=steps, sampler=sampler, guidance_scale=guidance, seed=seed, upsample=upsample
            )
