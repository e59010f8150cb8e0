"""Model configs of the unCLIP decoder and prior: frozen dataclasses saved as config.json beside the weights.

Torch-free on purpose: training configs nest them (`{"decoder": {...}}`) and the
CLI builds its flags from them without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from clipkit.diffusion.names import check_prediction_type
from clipkit.io import dataclass_from_json


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder UNet; the same class is the super-resolution stage (upsampler) of a cascade.

    A base decoder: image embedding -> pixels. An upsampler (`low_res_size` > 0): a noisy
    high-resolution image + the low-resolution image (resized and concatenated as input
    channels) + its augmentation noise level -> pixels; `embed_dim` 0 drops the embedding."""

    embed_dim: int = 128                      # CLIP embedding width (the condition); 0 = no embedding
    image_size: int = 32                      # 32 default; 64 works (add a level to `channels`)
    in_channels: int = 3
    patch_size: int = 2                       # 2x2 pixels folded into channels before the UNet
    channels: tuple = (64, 128, 128)          # width per UNet level (resolution halves each level)
    layers_per_block: int = 1                 # residual blocks per level (the up path gets the same)
    attention_levels: tuple = (False, True, True)   # self-attention (+ context tokens) per level
    heads: int = 4
    context_tokens: int = 4                   # extra attention tokens made from the embedding
    dropout: float = 0.0
    # What the network outputs and how the noise is laid out; the pipeline reads these.
    # x0 ("sample") suits flat-colour images: at high noise the net paints the image from the
    # embedding directly, and wrong background colours (eps-prediction's failure here) cannot hide.
    prediction: str = "sample"
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    schedule_shift: float = 1.0               # SNR / shift^2 at every timestep (NoiseSchedule's `shift`)
    # Sampling default: None clips x0 to [-1, 1]; a percentile (0.995) uses Imagen's dynamic thresholding.
    dynamic_threshold: float | None = None
    # Upsampler: side of the low-resolution input (0 = a base decoder) and the noise level (0..1) put on
    # it at sampling; training draws levels at random (noise-conditioning augmentation).
    low_res_size: int = 0
    aug_level: float = 0.0

    def __post_init__(self):
        # JSON round trips give lists; the frozen dataclass keeps tuples (hashable, comparable).
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        check_prediction_type(self.prediction, discrete=True)
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries for "
                             f"{len(self.channels)} levels in channels={self.channels}")
        if self.embed_dim < 0 or (self.embed_dim == 0 and self.low_res_size == 0):
            raise ValueError(f"embed_dim={self.embed_dim}; a base decoder needs the CLIP width (> 0), only an "
                             f"upsampler (low_res_size > 0) may drop the embedding with 0")
        if self.low_res_size < 0 or self.low_res_size >= self.image_size:
            raise ValueError(f"low_res_size={self.low_res_size}; expected 0 (base decoder) or a side smaller "
                             f"than image_size={self.image_size}")
        if not 0.0 <= self.aug_level < 1.0:
            raise ValueError(f"aug_level={self.aug_level}; expected a noise level in [0, 1)")
        if not self.schedule_shift > 0:
            raise ValueError(f"schedule_shift={self.schedule_shift}; expected > 0 (1.0 = the published schedule)")
        if self.dynamic_threshold is not None and not 0 < self.dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold={self.dynamic_threshold}; expected a percentile in (0, 1] "
                             f"(0.995 as in Imagen) or null for the static clip")
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % (2 ** (len(self.channels) - 1)):
            raise ValueError(f"image_size={self.image_size} with patch_size={self.patch_size} and "
                             f"{len(self.channels)} levels does not halve evenly; try 32 or 64")

    def to_json(self) -> dict:
        return {**asdict(self), "channels": list(self.channels), "attention_levels": list(self.attention_levels)}

    @classmethod
    def from_json(cls, data: dict) -> "DecoderConfig":
        return dataclass_from_json(cls, data, "decoder")


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 128
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    prediction: str = "sample"          # x0, as in the paper; "epsilon" / "v" also work with the samplers

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")
        check_prediction_type(self.prediction, discrete=True)

    @property
    def scale(self) -> float:
        """Embeddings live on the sphere of radius sqrt(D) inside the prior."""
        return math.sqrt(self.embed_dim)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PriorConfig":
        return dataclass_from_json(cls, data, "prior")


@dataclass(frozen=True)
class ArPriorConfig:
    """The autoregressive prior (clipkit.unclip.ar_prior): PCA components of the image embedding, each
    quantised into `bins` levels, predicted one after another by a causal transformer (unCLIP §2.2)."""

    embed_dim: int = 128
    components: int = 32                # leading PCA components predicted (unCLIP: 319 of 1,024 dimensions)
    bins: int = 1024                    # quantisation levels per component (unCLIP: 1,024)
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_tokens: int = 4                # prefix tokens made from the text embedding

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")
        if not 1 <= self.components <= self.embed_dim:
            raise ValueError(f"components={self.components}; expected 1..embed_dim ({self.embed_dim})")
        if self.bins < 2 or self.cond_tokens < 1:
            raise ValueError(f"bins={self.bins}, cond_tokens={self.cond_tokens}; expected bins >= 2, cond_tokens >= 1")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ArPriorConfig":
        return dataclass_from_json(cls, data, "ar_prior")
