"""Weights files: safetensors written atomically and read back verified, into a module that must fit them.

    save_weights(module.state_dict(), "run/model/model.safetensors", metadata={"format": "pt"})
    state = load_weights("run/model/model.safetensors", record=manifest["parts"]["model.safetensors"],
                         fix="save the model again")              # sha256 checked first (verify=False skips it)
    fit_weights(module, state, "run/model/model.safetensors", fix="...")   # other shapes: one line, not a traceback

The one place every reader of weights goes through (clipkit models, unCLIP
models, training checkpoints), so damage is refused the same way everywhere:
a file that is not safetensors (a pickle renamed, a cut download) raises
DamagedFileError; same-size damage raises DamagedFileError when the manifest
records a sha256; another model's weights raise WeightsMismatchError.
Never unpickles anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipkit.io.errors import DamagedFileError, WeightsMismatchError
from clipkit.io.files import atomic_path
from clipkit.io.outputs import verify_file


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """A safetensors file of `state` (tensors made contiguous, on CPU), written atomically, honouring the umask."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_weights(
    path: str | os.PathLike, *, record: Mapping | None = None, verify: bool = True, fix: str = ""
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after verify_file against its manifest `record` (when there is one)."""
    path = Path(path)
    if record is not None:
        verify_file(path, record, verify=verify, fix=fix)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; {fix}")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        with path.open("rb") as f:
            head = f.read(2)
        what = (
            "a pickle (torch.save), which clipkit never unpickles"
            if head == b"PK" or head[:1] == b"\x80"
            else f"damaged or not safetensors ({e})"
        )
        raise DamagedFileError(f"weights file {str(path)!r} is {what}; {fix}") from None


def fit_weights(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike, fix: str = ""
) -> torch.nn.Module:
    """module.load_state_dict(state, strict=True); weights of another shape or other names raise
    WeightsMismatchError naming `source`, the first difference and `fix`."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise WeightsMismatchError(
            f"the weights in {str(source)!r} do not fit this model ({detail[:240]}): "
            f"they belong to another model or configuration; {fix}"
        ) from None
    return module
