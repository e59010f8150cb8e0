"""The HTTP routes, one APIRouter per concern; `create_app` (serve/app.py) includes them all.

    pages      GET /  (the one-page UI; /static is mounted by the app)
    status     GET /health, /info, /metrics (Prometheus)
    items      GET /image/{id}
    search     POST /search
    zero_shot  POST /zero-shot
    generate   POST /generate

Routes get the engine and the metrics through FastAPI dependencies (`EngineDep`,
`MetricsDep`) that read them from `app.state`, where `create_app` put them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from clipkit.serve.engine import Engine
from clipkit.serve.metrics import Metrics


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
