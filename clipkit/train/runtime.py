"""The process a training run lives in: Accelerator, threads, seeds, the finite-loss guard, a clean exit.

    accelerator = make_accelerator(config)        # CPU multi-process aware (gloo), bf16, trackers
    seed_everything(config.seed, accelerator.process_index)
    ...
    if __name__ == "__main__":                    # a script's entry point, and only there
        exit_cleanly(main_guard(lambda: train(parse_config(MyConfig))))

Launching: `accelerate launch script.py --config cfg.json [--field value ...]` for
one process; for N CPU processes `accelerate launch --multi_gpu --num_processes N
--num_machines 1 --mixed_precision no --dynamo_backend no script.py ...` (with the
`cpu=True` that make_accelerator passes when there is no GPU, that gives MULTI_CPU
over gloo) or `torchrun --standalone --nproc_per_node N script.py ...`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import traceback
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from clipkit.io import UserError, output_lock
from clipkit.train.config import TrainConfig


def make_accelerator(config: TrainConfig, project_dir: str | os.PathLike | None = None):
    """An Accelerator for `config`: CPU when there is no GPU (MULTI_CPU/gloo when launched with N processes).

    On CPU each process gets cores // local processes intra-op threads, unless
    OMP_NUM_THREADS was set explicitly. Gradient accumulation and mixed
    precision come from the config; TensorBoard when `config.tensorboard`.
    """
    # lazy: Accelerate's import costs about a second, paid only by what starts a run
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = not torch.cuda.is_available()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    if config.num_threads is not None:
        # On a shared machine fewer threads than cores can be much faster: OpenMP
        # threads that wait on a busy core spin at every barrier.
        torch.set_num_threads(config.num_threads)
    elif cpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if not is_distributed():
        # A new run in the same process (a notebook, the demo, tests) may ask for another precision:
        # Accelerate keeps one process-wide state and would refuse. One process has nothing to share.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        # accumulation is the loop's own (train/loop.py): backward() must not rescale the loss
        log_with="tensorboard" if config.tensorboard else None,
        project_dir=str(project_dir or config.out_dir),
        # every parameter gets a gradient in CLIP-like models; skipping the unused-parameter search is faster
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if config.compile else "no",
    )
    return accelerator


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def run_lock(out_dir: str | os.PathLike):
    """One training run per out_dir: rank 0 holds clipkit.io's advisory lock for the whole run (a second
    run fails at once naming the first; a killed run's stale lock is taken over by `resume`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return output_lock(out_dir)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch; ranks get different streams (seed + rank)."""
    s = int(seed) + 1009 * int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became nan or inf; the run stopped before the update, checkpoints untouched (a UserError: the
    CLI says it in one line, exit 2 — a learning rate too high is the usual cause)."""


def check_finite(accelerator, loss: torch.Tensor, step: int, last_checkpoint: str | None = None) -> float:
    """Mean loss over processes as a float; raises NonFiniteLossError on every rank if any rank's is not finite.

    Collective (all ranks must call it at the same step): one rank stopping
    alone would leave the others waiting forever in the gradient all-reduce.
    """
    value = loss.detach().float().reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="mean")
    v = float(value)
    if not math.isfinite(v):
        where = (
            f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else "; no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"loss is {v} at step {step + 1} (before the update); stopping{where}. Lower the lr, "
            f"enable grad_clip, or use mixed_precision='no' to find the cause"
        )
    return v


def main_guard(fn: Callable[[], Any]) -> int:
    """Run a training main; return 0, or 1 after printing the error (rank-prefixed when distributed).

    User errors print one line; set CLIPKIT_DEBUG=1 for their traceback too.
    """
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the entry point reports every failure as an exit code
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank is not None and is_distributed() else ""
        if isinstance(e, (ValueError, FileNotFoundError, NonFiniteLossError)) and not os.environ.get("CLIPKIT_DEBUG"):
            print(f"{prefix}error: {e}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1


def exit_cleanly(code: int) -> typing.NoReturn:
    """End the process with `code`, surviving the gloo SIGABRT-at-exit trap. Call it ONLY from an entry point.

    On this machine's torch build, a process that used a gloo process group
    aborts at interpreter exit in roughly 1 of 4 runs ("terminate called
    without an active exception", SIGABRT: gloo's threads are torn down by
    static destructors in the wrong order; pytorch/pytorch#190489), even after
    destroy_process_group(). The launcher then reports failure for a run that
    succeeded. The workaround: after a successful run, meet the other ranks at
    a barrier (so nobody tears down while a peer still talks to it), flush our
    streams, and leave with os._exit, which skips the static destructors.
    Outputs are already on disk (every writer here is atomic and synchronous).
    On failure we skip the barrier (a peer may never reach it) and just leave.
    Single-process runs exit normally; a launched rank (WORLD_SIZE > 1) always leaves by os._exit.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if code == 0 and is_distributed():  # a loop that ended its process group already met the others
            try:
                torch.distributed.barrier()
            except Exception:  # a peer died: still leave without the destructors
                code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
