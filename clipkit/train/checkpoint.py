"""Full-state checkpoints: written atomically, kept to the newest N, resumed bit for bit.

Why not Accelerate's `save_state` / `load_state`: they write the optimiser,
scheduler and RNG states as pickles (`optimizer.bin`, `random_states_N.pkl`) and
read them back with full unpickling, which this project never does with a file a
user may hand it; they write in place (a crash mid-save leaves a half-written
folder that `load_state` then trips on); and `total_limit` retention needs
Accelerate's own folder naming. What we keep from Accelerate is everything else:
`unwrap_model`, `gather_object` for the per-rank RNG states, `wait_for_everyone`.
`skip_first_batches` does not apply: our data is an IterableDataset that is
replayed to its position instead (train/clip.py). What this module adds:

- safetensors for the weights, `torch.load(weights_only=True)` for the optimiser
  (tensors and plain data only), JSON for RNG states and the loop's own state;
- one directory per step, written under a temporary name and renamed whole
  (clipkit/io.py), so `latest` is always loadable; the newest `keep` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clipkit.io import atomic_directory, atomic_file, read_manifest, write_json, write_manifest
from clipkit.io.weights import fit_weights, load_weights, save_weights

CHECKPOINT_FORMAT = "clipkit-checkpoint"


def _rng_state() -> dict:
    """This process's python / numpy / torch (/ cuda) RNG states as JSON-ready lists."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy form, numpy's default
    name, keys, pos, has_gauss, cached = np_state
    out = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class CheckpointManager:
    """Full-state checkpoints in ROOT/step_00000123/, each written atomically by rank 0.

    A checkpoint holds model.safetensors (the unwrapped model's weights),
    trainer.pt (optimiser + scheduler state; tensors and plain data only, read
    back with weights_only=True), rng.json (python/numpy/torch RNG of every
    rank) and state.json (step, data position and whatever the loop adds).
    A directory only exists once complete, so `latest` is always loadable.
    """

    def __init__(self, root: str | os.PathLike, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, int(keep))

    def list(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if p.is_dir() and (p / "state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        accelerator,
        model,
        optimizer,
        scheduler,
        state: dict,
        extra: Callable[[Path], None] | None = None,
    ) -> Path:
        """Collective: every rank contributes its RNG; rank 0 writes. `extra(tmpdir)` may add files."""
        rngs = [_rng_state()]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        path = self.root / f"step_{step:08d}"
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            weights = {k: v.detach().contiguous().cpu() for k, v in unwrapped.state_dict().items()}
            with atomic_directory(path) as tmp:
                save_weights(weights, tmp / "model.safetensors")
                with atomic_file(tmp / "trainer.pt", "wb") as f:
                    torch.save(
                        {
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        },
                        f,
                    )
                write_json(tmp / "rng.json", {"ranks": rngs}, indent=None)
                if extra is not None:
                    extra(tmp)
                write_json(
                    tmp / "state.json",
                    {**state, "step": step, "world_size": accelerator.num_processes, "time": time.time()},
                )
                write_manifest(tmp, CHECKPOINT_FORMAT, {name: None for name in sorted(os.listdir(tmp))}, step=step)
            for old in self.list()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return path

    def resolve(self, resume: str | None) -> Path | None:
        """'latest' -> newest checkpoint here (None if there is none); a path -> that checkpoint."""
        if resume is None:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        if not (path / "state.json").is_file():
            raise FileNotFoundError(
                f"resume={resume!r} is not a checkpoint directory (no state.json); "
                f"use 'latest' or a {self.root}/step_* folder"
            )
        return path

    def resume(self, resume: str | None, accelerator, model, optimizer, scheduler) -> dict:
        """Load a checkpoint into (prepared) model, optimiser, scheduler and this rank's RNG; return its state.json.

        Returns {} when there is nothing to resume from.
        """
        path = self.resolve(resume)
        if path is None:
            if resume == "latest":
                accelerator.print(f"resume=latest: no checkpoint in {self.root}, starting fresh")
            return {}
        read_manifest(
            path,
            CHECKPOINT_FORMAT,
            full=True,
            what="checkpoint",
            fix=f"resume from an earlier {self.root}/step_* folder or start over",
        )
        state = json.loads((path / "state.json").read_text())
        fix = f"resume from another {self.root}/step_* folder, or start a new out_dir"
        fit_weights(
            accelerator.unwrap_model(model),
            load_weights(path / "model.safetensors", fix=fix),
            path / "model.safetensors",
            fix=fix,
        )
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        if scheduler is not None and trainer["scheduler"] is not None:
            scheduler.load_state_dict(trainer["scheduler"])
        rngs = json.loads((path / "rng.json").read_text())["ranks"]
        if len(rngs) == accelerator.num_processes:
            _set_rng_state(rngs[accelerator.process_index])
        else:
            accelerator.print(
                f"checkpoint was written by {len(rngs)} process(es), now {accelerator.num_processes}: "
                f"RNG streams restart from the seed"
            )
        state["path"] = str(path)
        accelerator.print(f"resumed from {path} at step {state['step']}")
        return state
