"""An unCLIP pipeline folder on disk: one model per sub-folder, and the CLIP it belongs to.

    save_model(decoder, decoder.config, "pipe/decoder", "decoder")     # config.json + model.safetensors
    decoder = load_model("pipe/decoder", "decoder")
    write_manifest("pipe", clip, clip_path)                            # unclip.json: the CLIP's identity
    check_clip(clip, identity, "pipe")                                 # refuses another CLIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipkit.config import SAVED_METADATA, config_from_dict, read_json_object
from clipkit.io import atomic_directory, write_json
from clipkit.unclip.ar_prior import ArPrior, ArPriorConfig
from clipkit.unclip.config import UpsamplerConfig
from clipkit.unclip.decoder import DecoderConfig, DecoderUNet
from clipkit.unclip.prior import DiffusionPrior, PriorConfig

MANIFEST = "unclip.json"
FORMAT = "clipkit-unclip"
MODELS = {"decoder": (DecoderUNet, DecoderConfig), "prior": (DiffusionPrior, PriorConfig),
          "upsampler": (DecoderUNet, UpsamplerConfig), "ar_prior": (ArPrior, ArPriorConfig)}


def save_model(module: torch.nn.Module, config, directory: str | os.PathLike, kind: str) -> Path:
    """config.json + model.safetensors, written atomically."""
    from safetensors.torch import save_file

    from clipkit import __version__

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": kind})
        write_json(tmp / "config.json", {"kind": kind, "clipkit_version": __version__, **config.to_json()})
    return directory


def load_model(directory: str | os.PathLike, kind: str):
    """Rebuild a DecoderUNet ("decoder") or DiffusionPrior ("prior") from its folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not a saved unCLIP {kind}: {name} is missing")
    data = read_json_object(directory / "config.json", f"{kind} config")
    if data.get("kind", kind) != kind:
        raise ValueError(f"{str(directory)!r} holds a {data.get('kind')!r}, expected a {kind!r}")
    if kind not in MODELS:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(MODELS)}")
    network, config_cls = MODELS[kind]
    module = network(config_from_dict(config_cls, data, kind, ignore=SAVED_METADATA))
    module.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return module.eval()


def write_manifest(directory: Path, clip, clip_path: str | None) -> None:
    ref = {"identity": clip.identity, "name": clip.config.name}
    if clip_path:
        ref["path"] = str(Path(clip_path).resolve())
        ref["relative_path"] = os.path.relpath(Path(clip_path).resolve(), Path(directory).resolve())
    write_json(Path(directory) / MANIFEST, {"format": FORMAT, "version": 1, "clip": ref})


def check_clip(clip, identity: str, where) -> None:
    if clip.identity != identity:
        raise ValueError(f"CLIP model {clip.identity!r} does not match the one {str(where)!r} was trained "
                         f"with ({identity!r}); embeddings of another CLIP mean nothing to its prior and decoder")
