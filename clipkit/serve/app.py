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
    GET  /image/{id}  the indexed image (PNG)     GET /health, /info, /metrics (Prometheus)

The routes live in serve/routes/ (one router each), request bodies in serve/bodies.py.
Every refusal is a JSON {"error": "..."} with a 4xx status that names the problem (a
`ClientError` from the engine's checks); a full queue is 503 with Retry-After; anything
else is a 500 with a generic message and a logged traceback (serve/errors.py).

The listening socket is made TCP_NODELAY (`bind_socket`): uvicorn writes a response's
headers and body in two writes, and with Nagle's algorithm on, the body waits for the
client's delayed ACK of the headers: 40 ms on every kept-alive request.
"""

from __future__ import annotations

import json
import socket

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from clipkit import __version__
from clipkit.serve.engine import Engine
from clipkit.serve.errors import InternalErrors, install_error_handlers
from clipkit.serve.metrics import Metrics, RequestMetrics
from clipkit.serve.routes import generate, items, pages, search, status, zero_shot
from clipkit.serve.routes.pages import STATIC


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app over `engine`: routers, error handlers, body limit, Prometheus metrics and request log."""
    # FastAPIOffline: the same FastAPI app, but /docs loads Swagger UI from the package, not from a CDN.
    app = FastAPIOffline(
        title="clipkit serve",
        version=__version__,
        redoc_url=None,
        description="Search a CLIP index by text, image, id or embedding arithmetic; zero-shot "
        "classify; generate images with an unCLIP pipeline. Errors are JSON "
        '{"error": "..."}; a full queue answers 503 with Retry-After.',
    )
    app.state.engine, app.state.metrics = engine, Metrics(engine)
    # Outermost last: the metrics see every answer (500s included), InternalErrors sees what BodyLimit does not.
    app.add_middleware(BodyLimit, max_bytes=engine.config.max_upload_bytes + 256 * 1024)
    app.add_middleware(InternalErrors)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    install_error_handlers(app)
    for module in (pages, status, items, search, zero_shot, generate):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ----------------------------------------------------------------------------- upload size


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while they stream in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps(
            {
                "error": f"the request body is {size} bytes; the limit is {self.max_bytes:,} bytes "
                f"(raise it with --max-upload-mb)"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
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
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (accepted ones inherit it);
    # the explicit option covers the listener itself (Linux copies it to accepted sockets).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port}: {e.strerror}; choose another --port (0 = any free one)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for `app`; its own loggers at `log_level`, formatted by whoever configured logging.

    uvicorn's access log stays off: RequestMetrics logs one line per request (clipkit.serve.requests).
    """
    return uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, log_level=log_level, access_log=False, timeout_keep_alive=30, lifespan="off"
        )
    )


def run_server(app, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve on `sock` until interrupted (uvicorn handles Ctrl-C / SIGTERM)."""
    make_server(app, log_level).run(sockets=[sock])
