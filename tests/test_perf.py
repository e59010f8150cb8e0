"""clipkit.perf: FLOPs counted exactly, utilisation arithmetic, and a peak cache that a busy neighbour cannot spoil."""

import json

import pytest
import torch

from clipkit import perf


def test_count_flops_is_exact_for_a_linear_forward_and_backward():
    m, k, n = 8, 16, 4
    layer, x = torch.nn.Linear(k, n, bias=False), torch.randn(m, k, requires_grad=True)
    assert perf.count_flops(lambda: layer(x)) == 2 * m * k * n
    # backward: grad of the input and of the weight, one matmul each
    assert perf.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * m * k * n


def test_utilisation_is_achieved_over_the_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(perf, "_load", lambda: 0.0)
    (tmp_path / "peak.json").write_text("{}")
    peak = perf.matmul_peak("fp32", size=128, repeats=2)
    u = perf.utilisation(flops_per_sample=2e8, samples_per_s=100.0, precision="no")
    assert u["precision"] == "fp32" and u["achieved_gflops"] == 20.0
    assert u["peak_fraction"] == pytest.approx(2e10 / peak, rel=1e-3)
    with pytest.raises(ValueError, match="precision='int3'"):
        perf.matmul_peak("int3")


def test_a_peak_measured_under_load_is_measured_again_when_quieter_and_the_higher_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path))
    key_part = "|fp32"
    monkeypatch.setattr(perf, "_load", lambda: 6.0)
    perf.matmul_peak("fp32", size=64, repeats=1)  # measured at load 6, cached
    cache = json.loads((tmp_path / "peak.json").read_text())
    (key,) = [k for k in cache if k.endswith(key_part)]
    assert cache[key]["load"] == 6.0
    # As busy as then: the cached figure is returned as it is (a made-up low one proves it is not re-measured).
    cache[key]["flops"] = 1.0
    (tmp_path / "peak.json").write_text(json.dumps(cache))
    assert perf.matmul_peak("fp32", size=64, repeats=1) == 1.0
    # Quieter now: measured again, and the higher figure replaces the low one.
    monkeypatch.setattr(perf, "_load", lambda: 0.1)
    again = perf.matmul_peak("fp32", size=64, repeats=1)
    assert again > 1.0 and json.loads((tmp_path / "peak.json").read_text())[key] == {"flops": again, "load": 0.1}
    # An entry written as a bare number (older caches) still reads.
    (tmp_path / "peak.json").write_text(json.dumps({key: 123.0}))
    assert perf.matmul_peak("fp32", size=64, repeats=1) == 123.0


def _attention_ops(context) -> set:
    from torch.profiler import profile

    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    with profile() as prof, torch.autocast("cpu", torch.bfloat16), context:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out.float().sum().backward()
    return {e.key for e in prof.key_averages() if "attention" in e.key}, out, q.grad


def test_bf16_training_attention_on_cpu_avoids_the_fused_kernel_and_matches_fp32():
    torch.manual_seed(0)
    fused, _, _ = _attention_ops(perf.attention_backend("cpu", "fp32"))  # fp32 keeps the default choice
    assert any("flash_attention" in op for op in fused)
    torch.manual_seed(0)
    ops, out, grad = _attention_ops(perf.attention_backend("cpu", "bf16"))
    assert not any("flash_attention" in op for op in ops)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref.sum().backward()
    assert torch.allclose(out.float(), ref, atol=3e-2) and torch.allclose(grad, q.grad, atol=5e-2)


def test_torch_threads_sets_then_restores_even_on_error():
    from clipkit.perf import torch_threads

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(target):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads=0"):
        with torch_threads(0):
            pass


def test_side_by_side_runs_calls_in_worker_processes_and_returns_results_in_order():
    import math
    import os

    # two calls run in spawned workers, not in this process; results come back in call order
    assert os.getpid() not in perf.side_by_side([(os.getpid, ()), (os.getpid, ())])
    assert perf.side_by_side([(math.pow, (2, 10)), (math.gcd, (12, 18))]) == [1024.0, 6]
    assert perf.side_by_side([(math.gcd, (4, 6))]) == [2]  # one call: in this process
    with pytest.raises(ValueError, match="math domain error"):
        perf.side_by_side([(math.sqrt, (-1,)), (math.gcd, (4, 6))])
