"""Prometheus metrics of a server (GET /metrics) and one log line per request.

    stages = stage_histogram()                 # the engine times encode / search / metadata / generate with it
    with stages.labels("search").time(): ...
    metrics = Metrics(engine)                  # one CollectorRegistry per app: tests and several apps never collide
    app.add_middleware(RequestMetrics, metrics=metrics)   # counts and times every request by route and status
    metrics.exposition()                       # (bytes in Prometheus' text format, its content type)

What a scrape shows (all names start with clipkit_serve_):
  requests_total{method, route, status}       counter of answered requests (route = the route template)
  request_duration_seconds{method, route}     histogram of whole-request latency
  stage_duration_seconds{stage}               histogram per stage: encode_text, encode_image (one forward of
                                              a micro-batch), search (one FAISS call), metadata (the hits'
                                              rows), generate (one unCLIP job)
  batches_total, batch_items_total, batch_largest, batch_pending, batch_rejected_total {batcher}
  texts_encoded_total, generation_{running,waiting} and generation_jobs_total{outcome}
  process_* (CPU seconds, memory, start time) of the serving process

The request log line goes to the `clipkit.serve.requests` logger at INFO, as key=value pairs
(`method=POST path=/search status=200 ms=6.91`), with the same fields in the record's extras.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "clipkit_serve"
# Seconds: a stage is ~0.1 ms (a FAISS call on a small index) to a minute (generation on a CPU).
BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
request_log = logging.getLogger("clipkit.serve.requests")


def stage_histogram() -> Histogram:
    """An unregistered stage-latency histogram: its owner (the engine) observes, each app's registry exposes it."""
    return Histogram(
        f"{PREFIX}_stage_duration_seconds",
        "Latency of one stage of serving a request (encode_*: one forward of a micro-batch; search: one FAISS call)",
        ["stage"],
        buckets=BUCKETS,
        registry=None,
    )


class EngineCollector:
    """Reads the engine's queue counters at scrape time (they live in the batchers, not in Prometheus objects)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        e = self.engine
        batchers = [b for b in (e.searcher, e.image_encoder) if b is not None]
        families: list[tuple[CounterMetricFamily | GaugeMetricFamily, str]] = [
            (CounterMetricFamily(f"{PREFIX}_batches", "Micro-batches run", labels=["batcher"]), "batches"),
            (CounterMetricFamily(f"{PREFIX}_batch_items", "Items run in micro-batches", labels=["batcher"]), "items"),
            (
                GaugeMetricFamily(f"{PREFIX}_batch_largest", "Largest micro-batch so far", labels=["batcher"]),
                "largest_batch",
            ),
            (GaugeMetricFamily(f"{PREFIX}_batch_pending", "Items waiting for a batch", labels=["batcher"]), "pending"),
            (
                CounterMetricFamily(
                    f"{PREFIX}_batch_rejected", "Items refused with 503 (queue full)", labels=["batcher"]
                ),
                "rejected",
            ),
        ]
        for b in batchers:
            stats = b.stats()
            for family, key in families:
                family.add_metric([b.name], stats[key])
        yield from (family for family, _ in families)
        yield CounterMetricFamily(f"{PREFIX}_texts_encoded", "Text queries encoded", value=e.texts_encoded)
        if e.generator is not None:
            g = e.generator.stats()
            yield GaugeMetricFamily(f"{PREFIX}_generation_running", "Generation jobs running", value=g["running"])
            yield GaugeMetricFamily(f"{PREFIX}_generation_waiting", "Generation jobs waiting", value=g["waiting"])
            jobs = CounterMetricFamily(f"{PREFIX}_generation_jobs", "Generation jobs by outcome", labels=["outcome"])
            for outcome in ("completed", "failed", "rejected"):
                jobs.add_metric([outcome], g[outcome])
            yield jobs


class Metrics:
    """One app's registry: request counters and latencies, the engine's stage histogram and queues, the process."""

    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(engine.stage_seconds)
        self.registry.register(EngineCollector(engine))
        ProcessCollector(registry=self.registry)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI (no per-request task, unlike BaseHTTPMiddleware): times, counts and logs every HTTP request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def noting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = "/static" if scope["path"].startswith("/static/") else "(unrouted)"
            self.metrics.record(scope["method"], route, status, seconds)
            if request_log.isEnabledFor(logging.INFO):
                ms = round(seconds * 1000, 2)
                request_log.info(
                    "method=%s path=%s status=%d ms=%.2f",
                    scope["method"],
                    scope["path"],
                    status,
                    ms,
                    extra={"method": scope["method"], "path": scope["path"], "status": status, "ms": ms},
                )
