"""GET /health (liveness), /info (what the page needs), /metrics (Prometheus' text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from clipkit.serve.routes import EngineDep, MetricsDep

router = APIRouter()


@router.get("/health", summary="liveness and what is loaded")
def health(engine: EngineDep):
    return {
        "status": "ok",
        "count": len(engine.index),
        "model": engine.model.identity,
        "unclip": engine.pipeline is not None,
    }


@router.get("/info", summary="index, model, filterable metadata columns and limits (for the page)")
def info(engine: EngineDep):
    return engine.info()


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests by route and status, latency histograms per request "
    "and per stage (encode, search, metadata, generate), queues, the process",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(metrics: MetricsDep) -> Response:
    content, content_type = metrics.exposition()
    return Response(content, headers={"content-type": content_type})
