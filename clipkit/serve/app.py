"""The `clipkit serve` web app: a JSON API (OpenAPI page at /docs) and a one-page UI, over an Engine.

    engine = Engine(EmbeddingIndex.load("idx"), model, pipeline)     # clipkit.serve.engine
    app = create_app(engine)                                         # a FastAPI app
    run_server(app, bind_socket("127.0.0.1", 8000))                  # uvicorn, until Ctrl-C

    POST /search      {"text": "a red circle", "k": 20, "filters": {"shape": "circle"}}
                      {"id": 42}  (more like this)   {"expression": "text:\\"a circle\\" + 0.8 * text:\\"a hat\\""}
                      or multipart/form-data with an `image` file (and k, filters as fields)
    POST /zero-shot   multipart: image + classes="circle, square, star"   or JSON {"id": 42, "classes": [...]}
    POST /generate    {"text": ..., "num_images": 4, "steps": 25, "sampler": "ddim", "guidance": 3.0,
                       "negative_prompt": ..., "seed": 0}   (or expression / id / an uploaded image)
    GET  /image/{id}  the indexed image (PNG)     GET /health, /info, /metrics

JSON bodies are validated strictly (a string where a number belongs is refused); form
fields are strings by nature and converted. Every refusal is a JSON {"error": "..."}
with a 4xx status that names the problem; a full queue is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import time
from pathlib import Path
from typing import Optional, Union

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipkit.serve.batching import Overloaded
from clipkit.serve.engine import Engine, Query, TooLarge, UnknownId
from clipkit.serve.metrics import Metrics, MetricsMiddleware

STATIC = Path(__file__).parent / "static"
Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool]


class Unsupported(Exception):
    """A Content-Type the endpoint does not read (HTTP 415)."""


# ----------------------------------------------------------------------------- request bodies

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchBody(_Body):
    text: Optional[str] = Field(None, description="text query", examples=["a red circle wearing a hat"])
    id: Optional[int] = Field(None, description="id of an indexed item: more like this (the item itself left out)")
    expression: Optional[str] = Field(None, description='arithmetic: text:"...", img:"42" (an indexed id), '
                                      'img:"upload" (the uploaded image), numbers, + - *, mean(), normalize()')
    k: int = Field(20, ge=1, description="number of results (capped at the index size and --max-k)")
    filters: Optional[dict[str, Union[Scalar, list[Scalar]]]] = Field(
        None, description="metadata filters {column: value or [values]}; GET /info lists the columns")


class ZeroShotBody(_Body):
    classes: list[str] = Field(description="class names (a form field takes them comma-separated)")
    templates: str = Field("simple", description="prompt templates: simple | openai | none")
    id: Optional[int] = Field(None, description="classify this indexed item instead of an uploaded image")


class GenerateBody(_Body):
    text: Optional[str] = Field(None, description="prompt: text -> prior -> decoder")
    expression: Optional[str] = Field(None, description="an arithmetic expression, decoded as an image embedding")
    id: Optional[int] = Field(None, description="variations of an indexed item")
    negative_prompt: Optional[str] = Field(None, description="pushed away from (text prompts only)")
    num_images: int = Field(4, description="images to make (1..--max-num-images)")
    steps: int = Field(25, description="decoder sampling steps")
    sampler: str = Field("ddim", description="ddim | ddpm | flow")
    guidance: float = Field(3.0, description="decoder classifier-free guidance scale")
    seed: int = Field(0, description="random seed (same seed, same images)")


def _body_doc(cls: type[BaseModel], upload: str | None) -> dict:
    """OpenAPI text for an endpoint reading JSON or (with `upload`) a multipart form."""
    content = {"application/json": {"schema": cls.model_json_schema()}}
    if upload:
        fields = {name: {"type": "string", "description": f.description or ""} for name, f in cls.model_fields.items()}
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary", "description": upload}, **fields}}}
    return {"requestBody": {"required": True, "content": content}}


def _form_value(name: str, value: str):
    """Form fields are strings: JSON for filters / lists, comma- or line-separated class names."""
    text = value.strip()
    if name == "filters":
        try:
            return json.loads(text) if text else None
        except ValueError as e:
            raise ValueError(f"form field filters is not JSON ({e}); send e.g. {{\"shape\": \"circle\"}}") from None
    if name == "classes":
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as e:
                raise ValueError(f"form field classes is not a JSON list ({e})") from None
        return [c.strip() for c in text.replace("\n", ",").split(",") if c.strip()]
    return value


async def read_body(request: Request, cls: type[BaseModel]) -> tuple[BaseModel, bytes | None]:
    """(validated body, uploaded image bytes or None) from a JSON body or a multipart form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload = None
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32, max_part_size=256 * 1024)
        data: dict = {}
        for name, value in form.multi_items():
            if name == "image":
                if isinstance(value, str):
                    raise TypeError("form field image must be a file upload, not text")
                upload = await value.read()
            elif name in data:
                raise ValueError(f"form field {name!r} is given twice")
            elif not isinstance(value, str):
                raise TypeError(f"form field {name!r} must be text, not a file (only `image` is a file)")
            else:
                data[name] = _form_value(name, value)
        strict = False
    elif ctype in ("application/json", ""):
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise ValueError(f"the request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise TypeError(f"the request body must be a JSON object; got a JSON {type(data).__name__}")
        strict = True
    else:
        raise Unsupported(f"Content-Type {ctype!r} is not read here; send application/json or multipart/form-data")
    return cls.model_validate(data, strict=strict), upload


def _one_source(body: BaseModel, upload: bytes | None, names: tuple[str, ...]) -> str:
    given = [n for n in names if getattr(body, n) is not None]
    if upload is not None and not (getattr(body, "expression", None) is not None):
        given.append("image")
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)} or an image upload; got "
                         f"{', '.join(given) if given else 'none'}")
    return given[0]


def _describe(errors: list[dict], cls: type[BaseModel] | None = None) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        got = repr(e.get("input"))
        parts.append(f"{loc}: {e.get('msg')} (got {got[:60] + '...' if len(got) > 60 else got})")
    if cls is not None and any(e.get("type") == "extra_forbidden" for e in errors):
        parts.append(f"known fields: {', '.join(cls.model_fields)}")
    return "; ".join(parts)


def _png_data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ----------------------------------------------------------------------------- the app

def create_app(engine: Engine) -> FastAPI:
    from clipkit import __version__

    from fastapi_offline import FastAPIOffline

    metrics = Metrics()
    # FastAPIOffline: the same FastAPI app, but /docs loads Swagger UI from the package, not from a CDN.
    app = FastAPIOffline(title="clipkit serve", version=__version__, redoc_url=None,
                  description="Search a CLIP index by text, image, id or embedding arithmetic; zero-shot "
                              "classify; generate images with an unCLIP pipeline. Errors are JSON "
                              '{"error": "..."}; a full queue answers 503 with Retry-After.')
    app.state.engine, app.state.metrics = engine, metrics
    app.add_middleware(BodyLimit, max_bytes=engine.config.max_upload_bytes + 256 * 1024)
    app.add_middleware(MetricsMiddleware, metrics=metrics)               # outermost: sees every answer

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    app.add_exception_handler(Overloaded, lambda r, e: error(503, str(e), {"Retry-After": str(e.retry_after)}))
    app.add_exception_handler(TooLarge, lambda r, e: error(413, str(e)))
    app.add_exception_handler(UnknownId, lambda r, e: error(404, str(e.args[0] if e.args else e)))
    app.add_exception_handler(Unsupported, lambda r, e: error(415, str(e)))
    app.add_exception_handler(ValidationError, lambda r, e: error(422, _describe(e.errors(), getattr(
        r.scope.get("route"), "body_model", None))))
    app.add_exception_handler(RequestValidationError, lambda r, e: error(422, _describe(list(e.errors()))))
    app.add_exception_handler(ValueError, lambda r, e: error(400, str(e)))
    app.add_exception_handler(TypeError, lambda r, e: error(422, str(e)))
    app.add_exception_handler(StarletteHTTPException, lambda r, e: error(e.status_code, str(e.detail), e.headers))

    wait = asyncio.wrap_future

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="liveness and what is loaded")
    def health():
        return {"status": "ok", "count": len(engine.index), "model": engine.model.identity,
                "unclip": engine.pipeline is not None}

    @app.get("/info", summary="index, model, filterable metadata columns and limits (for the page)")
    def info():
        return engine.info()

    @app.get("/metrics", summary="request counts, latency percentiles, batching and generation queues")
    def get_metrics():
        batching = {b.name: b.stats() for b in (engine.searcher, engine.image_encoder)}
        batching["search"]["texts_encoded"] = engine.texts_encoded
        return {**metrics.snapshot(), "batching": batching,
                "generation": engine.generator.stats() if engine.generator else None}

    @app.get("/image/{item_id}", summary="the indexed image of an id (PNG, at most 512 px a side)",
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown id or no image"}})
    def image(item_id: int):
        return Response(engine.image_png(item_id), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.post("/search", summary="nearest items to a text, an image, an indexed id or an expression",
              openapi_extra=_body_doc(SearchBody, "an image to search with (or img:\"upload\" in expression)"))
    async def search(request: Request):
        start = time.perf_counter()
        body, upload = await read_body(request, SearchBody)
        kind = _one_source(body, upload, ("text", "id", "expression"))
        k = engine.check_k(body.k)
        mask = await run_in_threadpool(engine.filter_mask, body.filters) if body.filters else None
        words, exclude, vector, text = None, None, None, None
        if kind == "text":
            text = engine.check_text(body.text)                       # encoded in the search batch
        elif kind == "id":
            exclude = body.id
            vector = await run_in_threadpool(engine.item_vector, body.id)
        elif kind == "expression":
            image = await run_in_threadpool(engine.read_image, upload) if upload is not None else None
            vector = await run_in_threadpool(engine.expression_vector, body.expression, None, image)
            words = await run_in_threadpool(engine.nearest_words, vector)
        else:
            vector = await wait(engine.image_encoder.submit(await run_in_threadpool(engine.read_image, upload)))
        scores, ids = await wait(engine.searcher.submit(Query(k, vector, text, mask, exclude)))
        results = engine.hits(scores, ids)
        return {"query": kind, "k": k, "count": len(results), "words": words,
                "took_ms": round((time.perf_counter() - start) * 1000, 2), "results": results}

    @app.post("/zero-shot", summary="class probabilities of an uploaded image (or an indexed id)",
              openapi_extra=_body_doc(ZeroShotBody, "the image to classify"))
    async def zero_shot(request: Request):
        start = time.perf_counter()
        body, upload = await read_body(request, ZeroShotBody)
        _one_source(body, upload, ("id",))
        if upload is not None:
            vector = await wait(engine.image_encoder.submit(await run_in_threadpool(engine.read_image, upload)))
        else:
            vector = await run_in_threadpool(engine.item_vector, body.id)
        ranked = await run_in_threadpool(engine.zero_shot, vector, body.classes, body.templates)
        return {"classes": ranked, "templates": body.templates, "took_ms": round((time.perf_counter() - start) * 1000, 2)}

    @app.post("/generate", summary="images from the unCLIP pipeline (text, expression, id or image)",
              openapi_extra=_body_doc(GenerateBody, "an image to make variations of"))
    async def generate(request: Request):
        start = time.perf_counter()
        body, upload = await read_body(request, GenerateBody)
        engine.check_generation(body.num_images, body.steps, body.sampler, body.guidance)
        kind = _one_source(body, upload, ("text", "expression", "id"))
        options = dict(num_images=body.num_images, steps=body.steps, sampler=body.sampler, guidance=body.guidance,
                       seed=body.seed)
        if body.negative_prompt is not None:
            options["negative_prompt"] = engine.check_text(body.negative_prompt, "negative_prompt")
        if kind == "text":
            options["text"] = engine.check_text(body.text)
        else:
            image = await run_in_threadpool(engine.read_image, upload) if upload is not None else None
            options["vector"] = await run_in_threadpool(engine.generation_vector, body.expression, body.id, image)
        images = await wait(engine.generator.submit(engine.generate, **options))
        encoded = await run_in_threadpool(lambda: [_png_data_url(im) for im in images])
        return {"source": kind, "images": encoded, "seconds": round(time.perf_counter() - start, 3)}

    for route in app.routes:                                  # for the 422 message's list of known fields
        model = {"/search": SearchBody, "/zero-shot": ZeroShotBody, "/generate": GenerateBody}.get(
            getattr(route, "path", None))
        if model is not None:
            route.body_model = model
    return app


# ----------------------------------------------------------------------------- upload size

class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while they stream in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps({"error": f"the request body is {size} bytes; the limit is {self.max_bytes:,} bytes "
                                    f"(raise it with --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, f"{int(length):,}")
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def noting_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(send, f"over {self.max_bytes:,}")


# ----------------------------------------------------------------------------- running

def bind_socket(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket (port 0: a free one; read it back with sock.getsockname()[1])."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port (0 = any free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, log_level: str = "warning"):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug",
                                         timeout_keep_alive=30, lifespan="off"))


def run_server(app, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve on `sock` until interrupted (uvicorn handles Ctrl-C / SIGTERM)."""
    make_server(app, log_level).run(sockets=[sock])
