"""What a request did wrong, and what the server did wrong: the only two kinds of error answer.

    raise ClientError(400, "text is empty; type something to search for")   # the engine's input checks
    raise UnknownId("id 99 is not in the index ...")                          # a ClientError with status 404
    install_error_handlers(app)      # ClientError -> {"error": message} with its 4xx
    app.add_middleware(InternalErrors)   # anything else -> 500 {"error": "internal server error; ..."}

Only the checks of a request's input raise `ClientError`; its message is meant for the
client and names the bad value and the fix. Every other exception, a `ValueError` from
deep inside the library included, is a bug or a broken server: the client gets a 500
with a generic JSON message and the traceback goes to the `clipkit.serve` logger. So no
internal text leaks into an answer, and no bug hides behind a 4xx.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from clipkit.serve.batching import Overloaded

logger = logging.getLogger("clipkit.serve")
INTERNAL = "internal server error; the server's log has the details"


class ClientError(Exception):
    """A request the server refuses: an HTTP `status` in 400..499 and a message for the client."""

    status = 400

    def __init__(self, status: int, message: str):
        if not 400 <= status < 500:
            raise ValueError(f"status={status}; a client error is 400..499")
        super().__init__(message)
        self.status, self.message = status, message


class TooLarge(ClientError):
    """An upload or image over a configured limit (HTTP 413)."""

    def __init__(self, message: str):
        super().__init__(413, message)


class UnknownId(ClientError):
    """An id that is not in the index, or whose image cannot be read (HTTP 404)."""

    def __init__(self, message: str):
        super().__init__(404, message)


class Unsupported(ClientError):
    """A Content-Type the endpoint does not read (HTTP 415)."""

    def __init__(self, message: str):
        super().__init__(415, message)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def describe(errors: Sequence[Mapping[str, Any]], fields: Iterable[str] | None = None) -> str:
    """Pydantic's errors in one line, `k: Input should be a valid integer (got 'ten')`; the known fields if one is
    unknown."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        got = repr(e.get("input"))
        parts.append(f"{loc}: {e.get('msg')} (got {got[:60] + '...' if len(got) > 60 else got})")
    if fields is not None and any(e.get("type") == "extra_forbidden" for e in errors):
        parts.append(f"known fields: {', '.join(fields)}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal a JSON {"error": ...}: client errors, full queues, bad path parameters, unknown routes."""
    app.add_exception_handler(ClientError, lambda r, e: error(e.status, e.message))
    app.add_exception_handler(Overloaded, lambda r, e: error(503, str(e), {"Retry-After": str(e.retry_after)}))
    app.add_exception_handler(RequestValidationError, lambda r, e: error(422, describe(list(e.errors()))))
    app.add_exception_handler(HTTPException, lambda r, e: error(e.status_code, str(e.detail), e.headers))


class InternalErrors:
    """Pure ASGI: an exception nothing else handled becomes a JSON 500; its traceback is logged once.

    (Starlette's own handler for `Exception` answers, then re-raises, so the server logs it a
    second time; this one sits inside it and stops there.)
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def noting_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except Exception:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            if started:  # half an answer is out: nothing to do but drop the connection
                raise
            await error(500, INTERNAL)(scope, receive, send)
