"""The HTTP routes, one APIRouter per concern; `create_app` (serve/app.py) includes them all.

    pages      GET /  (the one-page UI; /static is mounted by the app)
    status     GET /health, /info, /metrics (Prometheus)
    items      GET /image/{id}
    search     POST /search
    zero_shot  POST /zero-shot
    generate   POST /generate

Routes get the engine and the metrics through FastAPI dependencies (`EngineDep`,
`MetricsDep`) that read them from `app.state`, where `create_app` put them.
`QueryEngineDep` also counts the request in `engine.in_flight` while it runs: the
micro-batchers wait for company only when other queries are in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from clipkit.serve.engine import Engine
from clipkit.serve.metrics import Metrics


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def count_query(request: Request) -> AsyncIterator[Engine]:
    engine = request.app.state.engine
    engine.in_flight += 1            # async: runs on the event loop thread, the only writer (batchers only read)
    try:
        yield engine
    finally:
        engine.in_flight -= 1


EngineDep = Annotated[Engine, Depends(get_engine)]
QueryEngineDep = Annotated[Engine, Depends(count_query)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
