"""unCLIP on CLIP embeddings: a diffusion prior (text embedding -> image embedding) and a
diffusion decoder (image embedding -> pixels), joined in the `UnCLIP` pipeline.

    pipe = clipkit.UnCLIP.load("runs/unclip")
    pipe.generate("a red circle wearing a hat", num_images=4)[0].save("out.png")

Training lives in clipkit.train.unclip (`train_decoder`, `train_prior`), the CLI in
`clipkit train-decoder | train-prior | generate`. Names load lazily: `clipkit.unclip.config`
(the model configs) imports without torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy names, typed for type checkers (exported through __all__)
    from clipkit.unclip.config import DecoderConfig, PriorConfig, UpsamplerConfig  # noqa: F401
    from clipkit.unclip.decoder import DecoderUNet  # noqa: F401
    from clipkit.unclip.images import to_pil, trajectory_strip  # noqa: F401
    from clipkit.unclip.pipeline import UnCLIP, slerp  # noqa: F401
    from clipkit.unclip.prior import DiffusionPrior  # noqa: F401
    from clipkit.unclip.samplers import SAMPLERS  # noqa: F401
    from clipkit.unclip.storage import load_model, save_model  # noqa: F401

_EXPORTS = {
    "UnCLIP": "pipeline",
    "SAMPLERS": "samplers",
    "load_model": "storage",
    "save_model": "storage",
    "slerp": "pipeline",
    "to_pil": "images",
    "trajectory_strip": "images",
    "DecoderUNet": "decoder",
    "DiffusionPrior": "prior",
    "DecoderConfig": "config",
    "UpsamplerConfig": "config",
    "PriorConfig": "config",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"clipkit.unclip.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'clipkit.unclip' has no attribute {name!r}")
