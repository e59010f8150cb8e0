"""Model configs of the unCLIP decoder, upsampler and priors: frozen dataclasses saved as config.json beside
the weights, read back by the one strict reader (clipkit.config).

    DecoderConfig(embed_dim=128, image_size=64, channels=(32, 64, 64, 64), attention_levels=(False,) * 4)
    UpsamplerConfig(image_size=64, low_res_size=32)          # the cascade's super-resolution stage
    PriorConfig(embed_dim=128, width=256, layers=4)          # text embedding -> image embedding (diffusion)
    ArPriorConfig(embed_dim=128, components=32, bins=1024)   # the same, autoregressive
    config = config_from_dict(DecoderConfig, json_data)      # every constraint below is checked here

Resolution and width are fields: a 64 px decoder is `image_size=64` with one more level in
`channels` (each level halves the side). Torch-free on purpose: training configs nest them
(`{"decoder": {...}}`) and the CLI builds its flags from them without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clipkit.config import to_json
from clipkit.diffusion.names import SCHEDULE_KINDS, check_prediction_type

NORM_GROUPS = 8  # the UNet's GroupNorm groups (32 for widths of 128 and more that 32 divides)


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder UNet: image embedding -> pixels (UpsamplerConfig is its super-resolution variant).

    The image is `image_size` pixels a side, `patch_size` x `patch_size` pixels folded into channels,
    then one UNet level per entry of `channels` (its width), each level halving the side."""

    embed_dim: int = 128  # CLIP embedding width (the condition); 0 = no embedding
    image_size: int = 32  # 32 default; 64 works (add a level to `channels`)
    in_channels: int = 3
    patch_size: int = 2  # 2x2 pixels folded into channels before the UNet
    channels: tuple[int, ...] = (64, 128, 128)  # width per UNet level (resolution halves each level)
    layers_per_block: int = 1  # residual blocks per level (the up path gets the same)
    attention_levels: tuple[bool, ...] = (False, True, True)  # self-attention (+ context tokens) per level
    heads: int = 4
    context_tokens: int = 4  # extra attention tokens made from the embedding
    dropout: float = 0.0
    # What the network outputs and how the noise is laid out; the pipeline reads these.
    # x0 ("sample") suits flat-colour images: at high noise the net paints the image from the
    # embedding directly, and wrong background colours (eps-prediction's failure here) cannot hide.
    prediction: str = "sample"
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    schedule_shift: float = 1.0  # SNR / shift^2 at every timestep (NoiseSchedule's `shift`)
    # Sampling default: None clips x0 to [-1, 1]; a percentile (0.995) uses Imagen's dynamic thresholding.
    dynamic_threshold: float | None = None
    # Upsampler only (UpsamplerConfig): side of the low-resolution input (0 = a base decoder) and the noise
    # level (0..1) put on it at sampling; training draws levels at random (noise-conditioning augmentation).
    low_res_size: int = 0
    aug_level: float = 0.0

    def __post_init__(self):
        self._check_unet()
        if self.low_res_size:
            raise ValueError(
                f"low_res_size={self.low_res_size}; a base decoder takes no low-resolution input "
                f"(0): the super-resolution stage is an UpsamplerConfig"
            )
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim}; a decoder needs the CLIP embedding width (> 0)")

    def _check_unet(self) -> None:
        """Geometry and widths every UNet of this class needs (the checks DecoderUNet would fail on later)."""
        # Built in Python, tuples may arrive as lists: the frozen dataclass keeps tuples (hashable, comparable).
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        check_prediction_type(self.prediction, discrete=True)
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULE_KINDS}")
        for name in ("image_size", "in_channels", "patch_size", "layers_per_block", "heads", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if not self.channels or any(c < 1 or c % NORM_GROUPS for c in self.channels):
            raise ValueError(
                f"channels={list(self.channels)}; expected one width per UNet level, each a positive "
                f"multiple of {NORM_GROUPS} (GroupNorm groups), e.g. [32, 64, 64]"
            )
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries for "
                f"{len(self.channels)} levels in channels={list(self.channels)}; give one per level"
            )
        attended = [c for c, a in zip(self.channels, self.attention_levels) if a] + [self.channels[-1]]  # + middle
        if any(c % self.heads for c in attended):
            raise ValueError(
                f"heads={self.heads} does not divide the width of every attention level "
                f"({sorted(set(attended))}); choose heads that divides them, e.g. 4"
            )
        if self.embed_dim < 0 or self.context_tokens < 0:
            raise ValueError(f"embed_dim={self.embed_dim}, context_tokens={self.context_tokens}; expected >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}; expected a probability in [0, 1)")
        if not 0.0 <= self.aug_level < 1.0:
            raise ValueError(f"aug_level={self.aug_level}; expected a noise level in [0, 1)")
        if not self.schedule_shift > 0:
            raise ValueError(f"schedule_shift={self.schedule_shift}; expected > 0 (1.0 = the published schedule)")
        if self.dynamic_threshold is not None and not 0 < self.dynamic_threshold <= 1:
            raise ValueError(
                f"dynamic_threshold={self.dynamic_threshold}; expected a percentile in (0, 1] "
                f"(0.995 as in Imagen) or null for the static clip"
            )
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % (2 ** (len(self.channels) - 1)):
            raise ValueError(
                f"image_size={self.image_size} with patch_size={self.patch_size} and "
                f"{len(self.channels)} levels does not halve evenly; try 32 or 64 (a level per "
                f"halving: 64 px with patch_size 2 takes up to 6 levels)"
            )

    def to_json(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class UpsamplerConfig(DecoderConfig):
    """The cascade's super-resolution stage: a noisy `image_size` image + the `low_res_size` image (resized
    and concatenated as input channels) + its augmentation noise level -> pixels. `embed_dim` 0 (the
    default, what the upsampler trainer builds) conditions on the low-resolution image only."""

    embed_dim: int = 0
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 96)
    attention_levels: tuple[bool, ...] = (False, False, False)
    low_res_size: int = 32
    aug_level: float = 0.1

    def __post_init__(self):
        self._check_unet()
        if not 0 < self.low_res_size < self.image_size:
            raise ValueError(
                f"low_res_size={self.low_res_size}; an upsampler needs a low-resolution side between "
                f"1 and image_size-1 (image_size={self.image_size}), e.g. 32 for 64"
            )


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
    prediction: str = "sample"  # x0, as in the paper; "epsilon" / "v" also work with the samplers

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")
        check_prediction_type(self.prediction, discrete=True)
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULE_KINDS}")

    @property
    def scale(self) -> float:
        """Embeddings live on the sphere of radius sqrt(D) inside the prior."""
        return math.sqrt(self.embed_dim)

    def to_json(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class ArPriorConfig:
    """The autoregressive prior (clipkit.unclip.ar_prior): PCA components of the image embedding, each
    quantised into `bins` levels, predicted one after another by a causal transformer (unCLIP §2.2)."""

    embed_dim: int = 128
    components: int = 32  # leading PCA components predicted (unCLIP: 319 of 1,024 dimensions)
    bins: int = 1024  # quantisation levels per component (unCLIP: 1,024)
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_tokens: int = 4  # prefix tokens made from the text embedding

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")
        if not 1 <= self.components <= self.embed_dim:
            raise ValueError(f"components={self.components}; expected 1..embed_dim ({self.embed_dim})")
        if self.bins < 2 or self.cond_tokens < 1:
            raise ValueError(f"bins={self.bins}, cond_tokens={self.cond_tokens}; expected bins >= 2, cond_tokens >= 1")

    def to_json(self) -> dict:
        return to_json(self)
