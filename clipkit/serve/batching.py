"""Sharing one model between many requests: a micro-batching queue and a bounded worker pool.

    encoder = MicroBatcher(lambda texts: model.encode_texts(texts).numpy(), max_batch=64, window_ms=2)
    vector = encoder.submit("a red circle").result()       # concurrent submits share one forward pass
    pool = BoundedPool(workers=1, queue=4)
    images = pool.submit(pipe.generate, "a red star").result()   # raises Overloaded when 5 jobs are in

Why: a CPU forward pass of a small text tower costs nearly the same for 1 text
as for 32, and FAISS answers 32 queries in one call far faster than in 32. So
concurrent queries are collected for a few milliseconds (or until `max_batch`
are waiting) and run together; under load the worker is busy, queries pile up
meanwhile and the next batch takes them all without waiting at all. When the
caller says how many items can still come (`expected`, the server's queries in
flight) and all of them are in the batch, it runs at once: a lone query never
waits for company that does not exist.
`enabled=False` runs the very same worker one item at a time: the baseline
`benchmarks/bench_serve.py` compares against.

Generation is slow (seconds) and memory-hungry, so it runs in a fixed number
of worker threads with a fixed number of waiting places; a job beyond those is
refused at once with `Overloaded` (the web app answers 503 + Retry-After)
instead of piling up until clients time out.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor


class Overloaded(RuntimeError):
    """A queue is full; retry after `retry_after` seconds."""

    def __init__(self, what: str, retry_after: int):
        self.retry_after = max(1, int(retry_after))
        super().__init__(f"the {what} queue is full; retry in {self.retry_after} s")


class MicroBatcher:
    """Run `fn(list_of_items) -> list_of_results` on batches of items submitted from many threads.

    max_batch: largest batch; window_ms: how long the first item of a batch waits for company;
    max_pending: items allowed to wait before `submit` raises Overloaded; enabled=False: batches of one;
    expected: how many items may be on their way (e.g. requests in flight that will submit one), read
    when a batch forms: once the batch holds that many, it runs without waiting out the window. A lone
    query (1 client) then pays no window at all; None: always wait the window.
    """

    def __init__(
        self,
        fn: Callable[[list], Sequence],
        max_batch: int = 64,
        window_ms: float = 2.0,
        max_pending: int = 1024,
        enabled: bool = True,
        name: str = "batch",
        expected: Callable[[], int] | None = None,
    ):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r}; expected a positive int")
        if window_ms < 0 or max_pending < 1:
            raise ValueError(f"window_ms={window_ms}, max_pending={max_pending}; expected >= 0 and >= 1")
        self.fn, self.name, self.enabled = fn, name, bool(enabled)
        self.max_batch = max_batch if enabled else 1
        self.window = window_ms / 1000.0 if enabled else 0.0
        self.max_pending, self.expected = max_pending, expected
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches = self.items = self.largest = self.rejected = 0
        self._thread = threading.Thread(target=self._run, name=f"clipkit-{name}", daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        """Queue one item; the Future gets its result (or the exception `fn` raised for it)."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            if len(self._queue) >= self.max_pending:
                self.rejected += 1
                raise Overloaded(self.name, retry_after=1)
            self._queue.append((item, future))
            self._cv.notify()
        return future

    def __call__(self, item):
        return self.submit(item).result()

    def _take_batch(self) -> list | None:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None  # closed and drained
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or (self.expected is not None and len(batch) >= self.expected()):
                    break
                self._cv.wait(remaining)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batches += 1
            self.items += len(live)
            self.largest = max(self.largest, len(live))
            try:
                results = list(self.fn([item for item, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"{self.name}: fn returned {len(results)} results for {len(live)} items")
            except Exception as error:  # noqa: BLE001 - delivered to the callers
                if len(live) == 1:
                    live[0][1].set_exception(error)
                    continue
                for item, f in live:  # one bad item must not fail its batch mates
                    try:
                        f.set_result(self.fn([item])[0])
                    except Exception as e:  # noqa: BLE001
                        f.set_exception(e)
                continue
            for (_, f), result in zip(live, results):
                f.set_result(result)

    def stats(self) -> dict:
        return {
            "enabled": self.enabled,
            "max_batch": self.max_batch,
            "window_ms": self.window * 1000,
            "batches": self.batches,
            "items": self.items,
            "largest_batch": self.largest,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "pending": len(self._queue),
            "rejected": self.rejected,
        }

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)


class BoundedPool:
    """`workers` threads run jobs and `queue` more may wait; further submits raise Overloaded at once."""

    def __init__(self, workers: int = 1, queue: int = 4, name: str = "generate"):
        if not isinstance(workers, int) or workers < 1 or not isinstance(queue, int) or queue < 0:
            raise ValueError(f"workers={workers!r}, queue={queue!r}; expected workers >= 1 and queue >= 0")
        self.workers, self.queue, self.name = workers, queue, name
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"clipkit-{name}")
        self._lock = threading.Lock()
        self._in = 0  # running + waiting
        self._seconds: collections.deque = collections.deque(maxlen=32)
        self.completed = self.failed = self.rejected = 0

    def retry_after(self) -> int:
        """Seconds until a place is likely free: mean job time x jobs ahead per worker (at least 1)."""
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
        return max(1, math.ceil(mean * max(self._in, 1) / self.workers))

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        with self._lock:
            if self._in >= self.workers + self.queue:
                self.rejected += 1
                raise Overloaded(self.name, self.retry_after())
            self._in += 1
        try:
            return self._executor.submit(self._timed, fn, args, kwargs)
        except BaseException:
            self._release(None, ok=False)
            raise

    def _timed(self, fn, args, kwargs):
        start = time.perf_counter()
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
            return result
        finally:
            self._release(time.perf_counter() - start, ok)

    def _release(self, seconds: float | None, ok: bool) -> None:
        with self._lock:
            self._in -= 1
            if seconds is not None and ok:
                self._seconds.append(seconds)
            self.completed += ok
            self.failed += not ok

    def stats(self) -> dict:
        with self._lock:
            busy = self._in
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else None
        return {
            "workers": self.workers,
            "queue": self.queue,
            "running": min(busy, self.workers),
            "waiting": max(0, busy - self.workers),
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "mean_seconds": None if mean is None else round(mean, 3),
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
