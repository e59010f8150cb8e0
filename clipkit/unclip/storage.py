"""An unCLIP pipeline folder on disk: one model per sub-folder, and the CLIP it belongs to.

    claim_pipeline("pipe", clip, overwrite=False)                      # before training: ours, new, or refused
    save_model(decoder, decoder.config, "pipe/decoder", "decoder")     # config.json + model.safetensors + manifest.json
    decoder = load_model("pipe/decoder", "decoder")                    # sha256 verified (verify=False: sizes only)
    write_manifest("pipe", clip, clip_path)                            # unclip.json: the CLIP's identity
    ref = read_pipeline_manifest("pipe")                               # its "clip" reference, checked
    check_clip(clip, identity, "pipe")                                 # refuses another CLIP

Each model sub-folder is written like a clipkit model (clipkit.io.staged_output:
complete or absent, a manifest.json with every file's sha256, never over a folder
clipkit did not write unless `overwrite`); unclip.json marks the folder as a pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipkit import __version__
from clipkit.config import SAVED_METADATA, config_from_dict, read_json_object
from clipkit.io import (
    MANIFEST_NAME,
    DamagedFileError,
    OutputError,
    check_output_path,
    claim_output,
    read_manifest,
    staged_output,
    write_json,
)
from clipkit.io import write_manifest as write_parts_manifest
from clipkit.io.weights import fit_weights, load_weights, save_weights
from clipkit.unclip.ar_prior import ArPrior, ArPriorConfig
from clipkit.unclip.config import UpsamplerConfig
from clipkit.unclip.decoder import DecoderConfig, DecoderUNet
from clipkit.unclip.prior import DiffusionPrior, PriorConfig

MANIFEST = "unclip.json"
FORMAT = "clipkit-unclip"
MODELS = {
    "decoder": (DecoderUNet, DecoderConfig),
    "prior": (DiffusionPrior, PriorConfig),
    "upsampler": (DecoderUNet, UpsamplerConfig),
    "ar_prior": (ArPrior, ArPriorConfig),
}


def model_format(kind: str) -> str:
    """The manifest format of a saved unCLIP model of `kind` ("clipkit-unclip-decoder", ...)."""
    return f"clipkit-unclip-{kind}"


def save_model(
    module: torch.nn.Module, config, directory: str | os.PathLike, kind: str, *, overwrite: bool = False, inputs=()
) -> Path:
    """config.json + model.safetensors + manifest.json, complete or absent (a previous `kind` model there is
    replaced; anything else only with `overwrite`)."""
    directory = Path(directory)
    with staged_output(directory, model_format(kind), inputs=inputs, overwrite=overwrite) as stage:
        save_weights(module.state_dict(), stage.dir / "model.safetensors", metadata={"format": "pt", "kind": kind})
        write_json(stage.dir / "config.json", {"kind": kind, "clipkit_version": __version__, **config.to_json()})
        write_parts_manifest(stage.dir, model_format(kind), {"model.safetensors": None, "config.json": None}, kind=kind)
    return directory


def load_model(directory: str | os.PathLike, kind: str, verify: bool = True):
    """Rebuild the `kind` model ("decoder", "prior", "upsampler", "ar_prior") from its folder, verified against
    its manifest.json (sha256; `verify=False`: sizes only). Folders saved before manifests load unverified."""
    directory = Path(directory)
    if kind not in MODELS:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(MODELS)}")
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not a saved unCLIP {kind}: {name} is missing")
    fix = f"train the {kind} again (clipkit train-{kind.replace('_', '-')}) or copy the folder again"
    if (directory / MANIFEST_NAME).exists():
        read_manifest(directory, model_format(kind), fix=fix, what=f"unCLIP {kind}", verify=verify)
    data = read_json_object(directory / "config.json", f"{kind} config")
    if data.get("kind", kind) != kind:
        raise ValueError(f"{str(directory)!r} holds a {data.get('kind')!r}, expected a {kind!r}")
    network, config_cls = MODELS[kind]
    module = network(config_from_dict(config_cls, data, kind, ignore=SAVED_METADATA))
    weights = directory / "model.safetensors"
    fit_weights(module, load_weights(weights, fix=fix), weights, fix=fix)
    return module.eval()


def write_manifest(directory: Path, clip, clip_path: str | None) -> None:
    ref = {"identity": clip.identity, "name": clip.config.name}
    if clip_path:
        ref["path"] = str(Path(clip_path).resolve())
        ref["relative_path"] = os.path.relpath(Path(clip_path).resolve(), Path(directory).resolve())
    write_json(Path(directory) / MANIFEST, {"format": FORMAT, "version": 1, "clip": ref})


def read_pipeline_manifest(directory: str | os.PathLike) -> dict:
    """The "clip" reference of DIRECTORY/unclip.json ({"identity", "name", "path"?, "relative_path"?}).

    A missing file raises FileNotFoundError; one that is not a clipkit pipeline manifest
    (another tool's unclip.json, damaged JSON, missing keys) raises DamagedFileError naming it."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not an unCLIP pipeline folder: {MANIFEST} is missing")
    try:
        data = read_json_object(path, "unCLIP pipeline manifest")
    except ValueError as e:
        raise DamagedFileError(str(e)) from None
    ref = data.get("clip")
    if data.get("format") != FORMAT or not isinstance(ref, dict) or not isinstance(ref.get("identity"), str):
        raise DamagedFileError(
            f"{str(path)!r} is not a clipkit unCLIP pipeline manifest (expected format {FORMAT!r} "
            f"and a clip identity); it was not written by clipkit or is damaged. Use another "
            f"pipeline folder, or remove that file"
        )
    return ref


def claim_pipeline(
    directory: str | os.PathLike, clip, *, overwrite: bool = False, inputs=(), flag: str = "--overwrite"
) -> Path:
    """May a model of `clip` be written into pipeline folder DIRECTORY? Call it before training, not at export.

    Ours (an unclip.json of this clipkit) is accepted when it records the same CLIP and refused
    (ValueError) when it records another; a new or empty folder is created and marked; anything else,
    a foreign unclip.json included, is refused unless `overwrite` (clipkit.io.claim_output)."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file() and not overwrite:
        ref = read_pipeline_manifest(directory)
        check_output_path(directory, FORMAT, inputs, overwrite=True, flag=flag)  # inputs only
        if ref["identity"] != clip.identity:
            raise OutputError(
                f"pipeline folder {str(directory)!r} was built with CLIP {ref['identity']!r}, this run "
                f"uses {clip.identity!r}; use another pipeline folder or retrain its other models"
            )
        return directory
    return claim_output(directory, FORMAT, inputs, overwrite, flag)


def check_clip(clip, identity: str, where) -> None:
    if clip.identity != identity:
        raise ValueError(
            f"CLIP model {clip.identity!r} does not match the one {str(where)!r} was trained "
            f"with ({identity!r}); embeddings of another CLIP mean nothing to its prior and decoder"
        )
