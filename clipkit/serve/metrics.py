"""Request counts and latency percentiles per route (GET /metrics shows them).

    metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)   # times every HTTP request by route and status
    metrics.snapshot()     # {"uptime_s", "requests", "routes": {"POST /search": {"count", "status", "p50_ms", ...}}}
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

WINDOW = 4096          # latencies kept per route for the percentiles


class Metrics:
    def __init__(self):
        self.started = time.time()
        self._lock = threading.Lock()
        self._count: collections.Counter = collections.Counter()
        self._status: dict = collections.defaultdict(collections.Counter)
        self._latency: dict = collections.defaultdict(lambda: collections.deque(maxlen=WINDOW))

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._count[route] += 1
            self._status[route][str(status)] += 1
            self._latency[route].append(seconds)

    def snapshot(self) -> dict:
        with self._lock:
            routes = {}
            for route in sorted(self._count):
                ms = np.asarray(self._latency[route]) * 1000
                p50, p90, p99 = np.percentile(ms, [50, 90, 99]).round(2).tolist()
                routes[route] = {"count": self._count[route], "status": dict(self._status[route]),
                                 "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": round(float(ms.mean()), 2),
                                 "window": len(ms)}
            total = sum(self._count.values())
        return {"uptime_s": round(time.time() - self.started, 1), "requests": total, "routes": routes}


class MetricsMiddleware:
    """Pure ASGI (no per-request task like BaseHTTPMiddleware): times requests by route template."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = "/static" if scope["path"].startswith("/static/") else "(unrouted)"
            self.metrics.record(f"{scope['method']} {route}", status[0], time.perf_counter() - start)
