"""How close a run comes to this machine's limit: FLOPs counted, the matmul peak measured once and cached.

    flops = count_flops(lambda: loss_fn(model, batch).backward())   # FLOPs of one call (torch FlopCounterMode)
    peak = matmul_peak("bf16")                                       # FLOP/s of a large matmul here (cached)
    utilisation(flops_per_sample=flops / batch_size, samples_per_s=316.0, precision="fp32")
    # {"gflop_per_sample": 0.2, "achieved_gflops": 63.2, "peak_gflops": 328.0, "peak_fraction": 0.19, ...}
    with torch_threads(2): ...                                       # intra-op threads for a block, then restored
    side_by_side([(train_decoder, (cfg_a,)), (train_upsampler, (cfg_b,))])  # one process each, at the same time

The peak is what this process's intra-op threads get from a 2048 x 2048 matmul in
the given precision (the best of a few repeats), so "fraction of peak" reads the
same on a laptop CPU, this 2-core server (see docs/experiments/precision.md) and a
GPU. It is measured once per (device, threads, torch, precision) and kept in
$XDG_CACHE_HOME/clipkit/peak.json (or $CLIPKIT_CACHE) with the load average it was
measured at: a busy neighbour only makes a peak look lower, so it is measured again
when the machine is quieter than it was then, and the higher figure is kept.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from clipkit.io import write_json

PRECISIONS = {"fp32": torch.float32, "no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n inside the block, the caller's again after it (None: unchanged).

    with torch_threads(2):
        train_small_models()
    """
    before = torch.get_num_threads()
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"threads={n!r}; expected a positive count")
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def side_by_side(calls: Sequence[tuple[Callable, tuple]]) -> list:
    """Run independent calls at the same time, each in its own (spawned) process; their results, in order.

    For small models whose steps are per-kernel overhead rather than arithmetic: the demo's decoder ran at
    6.6 steps/s on one thread beside another training process against 9.5 alone on two threads, so such a
    pair does ~1.4x the work a second of one run on both cores (docs/benchmarks/demo.md). Each call sets
    its own threads (a training config's num_threads); the functions and arguments must pickle
    (module-level functions, config dataclasses) and so must the results.
    The first call that raises re-raises here, once the others have finished."""
    if len(calls) <= 1:
        return [fn(*args) for fn, args in calls]
    ctx = multiprocessing.get_context("spawn")  # no forked copy of a parent's torch thread pool
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(calls), mp_context=ctx) as pool:
        futures = [pool.submit(fn, *args) for fn, args in calls]
        concurrent.futures.wait(futures)
        return [f.result() for f in futures]


def attention_backend(device_type: str, precision: str):
    """The context a bf16 training step (forward and backward) runs in: on CPU, attention on torch's math backend.

        with torch.autocast("cpu", torch.bfloat16), attention_backend("cpu", "bf16"):
            loss = model(x).float().mean()
            loss.backward()

    Measured here (torch 2.14, 2 threads, shapes-small CLIP, batch 128): the fused CPU attention
    kernel's bf16 backward took 1.41 s of a 2.2 s step against 0.09 s in fp32, which made bf16
    training 0.6x fp32; on the math backend (plain bf16 matmuls + softmax) the same step runs 1.4x
    fp32. Inference keeps the fused kernel: its bf16 forward is the faster one (65 vs 77 ms for
    256 images). Elsewhere (fp32, GPUs) the default backend choice is kept.
    """
    if device_type == "cpu" and precision == "bf16":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


class FlopCount:
    """`with FlopCount() as c: ...` then `c.flops`: the floating-point operations torch performed inside
    (matmuls, convolutions, attention; forward and backward), counted by torch's FlopCounterMode."""

    def __enter__(self) -> FlopCount:
        from torch.utils.flop_counter import FlopCounterMode

        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self.flops = int(self._mode.get_total_flops())


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations torch performs in `fn()`."""
    with FlopCount() as counter:
        fn()
    return counter.flops


def _cache_file() -> Path:
    root = os.environ.get("CLIPKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "clipkit"
    )
    return Path(root) / "peak.json"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def matmul_peak(
    precision: str = "fp32", device: str | torch.device = "cpu", size: int = 2048, repeats: int = 5, cache: bool = True
) -> float:
    """FLOP/s of a `size`^2 matmul in `precision` ("fp32" | "bf16" | "fp16") on `device`, best of `repeats`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {sorted(PRECISIONS)}")
    device = torch.device(device)
    key = (
        f"{_device_name(device)}|{device.type}|threads={torch.get_num_threads()}|torch={torch.__version__}|{precision}"
    )
    path = _cache_file()
    known = json.loads(path.read_text()) if cache and path.is_file() else {}
    entry = known.get(key)
    if isinstance(entry, (int, float)):  # written before loads were recorded
        entry = {"flops": float(entry), "load": 0.0}
    load = _load()
    # A busy neighbour can only make the peak look lower: re-measure when the machine is quieter than it
    # was then, and keep the higher figure.
    if entry is not None and load >= entry["load"] - 0.5:
        return float(entry["flops"])
    dtype = PRECISIONS[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up (kernel choice, page faults)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    peak = max(2 * size**3 / best, entry["flops"] if entry is not None else 0.0)
    if cache:
        write_json(path, {**known, key: {"flops": peak, "load": round(load, 2)}})
    return peak


def _load() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def utilisation(
    flops_per_sample: float, samples_per_s: float, precision: str = "fp32", device: str | torch.device = "cpu"
) -> dict:
    """Model FLOPs per sample, achieved FLOP/s and their fraction of this machine's matmul peak."""
    precision = "fp32" if precision in ("no", None) else precision
    peak = matmul_peak(precision, device)
    achieved = flops_per_sample * samples_per_s
    return {
        "gflop_per_sample": round(flops_per_sample / 1e9, 4),
        "achieved_gflops": round(achieved / 1e9, 2),
        "peak_gflops": round(peak / 1e9, 1),
        "peak_fraction": round(achieved / peak, 4),
        "precision": precision,
    }
