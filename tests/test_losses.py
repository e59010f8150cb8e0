"""clipkit.losses: parity with open_clip on one process, exactness across two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from clipkit.losses import clip_loss, siglip_loss


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_(),
        F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_(),
    )


@pytest.mark.parametrize("n,d,scale", [(2, 4, 1.0), (16, 32, 14.285), (64, 8, 100.0)])
def test_clip_loss_matches_open_clip(n, d, scale):
    from open_clip.loss import ClipLoss

    img, txt = _features(n, d, seed=n)
    ours = clip_loss(img, txt, torch.tensor(scale))
    ours_grads = torch.autograd.grad(ours, (img, txt))
    ref = ClipLoss()(img, txt, torch.tensor(scale))
    ref_grads = torch.autograd.grad(ref, (img, txt))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_siglip_loss_matches_open_clip():
    from open_clip.loss import SigLipLoss

    img, txt = _features(24, 16, seed=3)
    ours = siglip_loss(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    ref = SigLipLoss()(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_perfect_alignment_gives_low_loss_and_bad_shapes_raise():
    eye = torch.eye(8)
    assert float(clip_loss(eye, eye, 100.0)) < 1e-6
    assert float(clip_loss(eye, eye.roll(1, 0), 100.0)) > 50
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(4, 8\)"):
        clip_loss(eye, eye[:4], 1.0)


# Each rank: the same seeded projection heads and global batch; it keeps its half of the
# batch, computes the local loss, and averages gradients as DDP does. Rank 0 writes the results.
_WORKER = textwrap.dedent("""
    import json, os, sys, torch, torch.nn.functional as F, torch.distributed as dist
    from clipkit.losses import clip_loss, siglip_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    for kind in ("clip", "siglip"):
        torch.manual_seed(0)
        img_head, txt_head = torch.nn.Linear(12, 6), torch.nn.Linear(10, 6)
        scale, bias = torch.nn.Parameter(torch.tensor(2.5)), torch.nn.Parameter(torch.tensor(-3.0))
        x, y = torch.randn(8, 12), torch.randn(8, 10)          # global batch of 8
        n = 8 // world
        img = F.normalize(img_head(x[rank * n:(rank + 1) * n]), dim=-1)
        txt = F.normalize(txt_head(y[rank * n:(rank + 1) * n]), dim=-1)
        if kind == "clip":
            loss = clip_loss(img, txt, scale.exp())
        else:
            loss = siglip_loss(img, txt, scale.exp(), bias)
        loss.backward()
        params = [*img_head.parameters(), *txt_head.parameters(), scale, bias]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
        for g in grads:
            dist.all_reduce(g)
            g /= world                                       # DDP averages gradients over ranks
        total = loss.detach().clone()
        dist.all_reduce(total)
        out[kind] = {"loss": float(total / world), "grads": [g.reshape(-1).tolist() for g in grads]}
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    # the entry-point workaround for the gloo SIGABRT-at-exit trap (clipkit.train.runtime.exit_cleanly)
    dist.barrier()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
""")


def _single_process_reference(kind):
    torch.manual_seed(0)
    img_head, txt_head = torch.nn.Linear(12, 6), torch.nn.Linear(10, 6)
    scale, bias = torch.nn.Parameter(torch.tensor(2.5)), torch.nn.Parameter(torch.tensor(-3.0))
    x, y = torch.randn(8, 12), torch.randn(8, 10)
    img, txt = F.normalize(img_head(x), dim=-1), F.normalize(txt_head(y), dim=-1)
    loss = clip_loss(img, txt, scale.exp()) if kind == "clip" else siglip_loss(img, txt, scale.exp(), bias)
    loss.backward()
    params = [*img_head.parameters(), *txt_head.parameters(), scale, bias]
    return float(loss.detach()), [torch.zeros_like(p) if p.grad is None else p.grad for p in params]


@pytest.mark.multiprocess
def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    script, result = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(result),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(result.read_text())
    for kind in ("clip", "siglip"):
        loss, grads = _single_process_reference(kind)
        assert out[kind]["loss"] == pytest.approx(loss, rel=1e-6, abs=1e-6), kind
        for got, want in zip(out[kind]["grads"], grads):
            torch.testing.assert_close(torch.tensor(got), want.reshape(-1), rtol=1e-5, atol=1e-6)
        # the gradients are not trivially zero: the test would catch a world-size factor
        assert max(float(g.abs().max()) for g in grads) > 1e-3
