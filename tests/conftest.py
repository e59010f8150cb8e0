"""Shared fixtures: an isolated environment, tiny shapes shards, a tiny model.

Tests keep every cache inside a temporary folder, never reach the network,
and use the `shapes-tiny` preset so the whole suite runs on a 2-core CPU.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# Before torch / matplotlib / huggingface_hub are imported by any test module.
_CACHE = tempfile.mkdtemp(prefix="clipkit-test-cache-")
for var, sub in (
    ("MPLCONFIGDIR", "mpl"),
    ("HF_HOME", "hf"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("XDG_CACHE_HOME", "xdg"),
):
    os.environ.setdefault(var, os.path.join(_CACHE, sub))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """Small shapes splits as shards: train (600 in 3 shards), val (200), holdout (100), hat_pairs (40)."""
    from clipkit.shapes.world import write_split

    root = tmp_path_factory.mktemp("shapes")
    for split, num, seed, shard_size in (
        ("train", 600, 0, 200),
        ("val", 200, 1, 200),
        ("holdout", 100, 2, 100),
        ("hat_pairs", 40, 3, 40),
    ):
        write_split(root / split, split=split, num=num, seed=seed, shard_size=shard_size)
    return root


@pytest.fixture(scope="session")
def tiny_model():
    """A fresh `shapes-tiny` model (seeded). Do not train it in place: use `fresh_tiny_model`."""
    import clipkit

    return clipkit.create("shapes-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    """`tiny_model` saved as a clipkit model directory (what training configs and pipelines point at)."""
    path = tmp_path_factory.mktemp("clip") / "tiny"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: extra threads only add a sync per op, and on a
    busy 2-core machine OpenMP spin-waits make them 10-30x slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_tiny_model():
    import clipkit

    return clipkit.create("shapes-tiny", seed=0)
