"""The training configs of each model (torch-free, so the CLI builds its flags without importing torch).

    ClipTrainConfig      contrastive CLIP / SigLIP training on image-caption shards   (train/clip.py)
    DecoderTrainConfig   the unCLIP decoder on a frozen CLIP                          (train/unclip.py)
    UpsamplerTrainConfig the cascade's super-resolution stage (32 -> 64 px)           (train/unclip.py)
    PriorTrainConfig     the unCLIP prior on a frozen CLIP                            (train/unclip.py)

A model's own fields are nested, not re-declared: `{"decoder": {"channels": [32, 64, 64]}}`
in JSON, `--decoder.channels 32 64 64` on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipkit.diffusion.names import LOSS_WEIGHTINGS
from clipkit.train.config import TrainConfig
from clipkit.unclip.config import ArPriorConfig, DecoderConfig, PriorConfig

LOSSES = ("clip", "siglip")


@dataclass
class ClipTrainConfig(TrainConfig):
    model: str = "shapes-tiny"             # clipkit preset, open_clip architecture, or a saved model directory
    pretrained: str | None = None          # open_clip tag or weights file for `model` (fine-tuning)
    train_data: str = ""                   # shard urls: brace pattern, '::'-separated, or a folder of .tar
    train_num_samples: int | None = None   # samples per epoch; default: from the *_stats.json files
    val_data: str | None = None            # evaluation split: loss, retrieval recall@k (+ evaluators)
    holdout_data: str | None = None        # a second evaluation split, reported as holdout/*
    val_max_samples: int = 2000
    eval_batch_size: int = 500
    zeroshot_eval: list = field(default_factory=list)   # zero-shot datasets (clipkit.evaluation layouts)
    resampled: bool = False                # draw shards with replacement (every rank sees all shards)
    shuffle_buffer: int = 2000             # samples in the shuffle buffer per worker (0 = off)
    crop_scale: float | None = None        # augment with open_clip's train transform: RandomResizedCrop of
                                           # (crop_scale..1) of the area (open_clip uses 0.9); null = none
    loss: str = "clip"                     # clip | siglip (siglip needs a model with a logit_bias)
    logit_scale_max: float = 100.0
    grad_checkpointing: bool = False
    # Fine-tuning: freeze towers as open_clip's --lock-image / --lock-text do.
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0    # last layer groups of the image tower left trainable
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = True
    export_dir: str | None = None          # also save the final model here (default: out_dir/model)
    overwrite: bool = False                # let export_dir replace an existing folder that is not a model

    def validate(self) -> None:
        super().validate()
        if not self.train_data:
            raise ValueError("train_data is empty; expected shard urls such as 'data/train/{00000..00003}.tar'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not one of {LOSSES}")
        if self.logit_scale_max <= 1:
            raise ValueError(f"logit_scale_max={self.logit_scale_max}; expected > 1")
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale={self.crop_scale}; expected a fraction of the image area in (0, 1] or null")
        if self.train_num_samples is not None and self.train_num_samples < 1:
            raise ValueError(f"train_num_samples={self.train_num_samples}; expected >= 1")
        if self.lock_image_unlocked_groups < 0 or self.lock_text_unlocked_layers < 0:
            raise ValueError("lock_image_unlocked_groups / lock_text_unlocked_layers; expected >= 0")


@dataclass
class UnclipTrainConfig(TrainConfig):
    """What the decoder and the prior share: the frozen CLIP, the data, EMA and condition dropout."""

    weight_decay: float = 0.0
    beta2: float = 0.99
    clip: str = "runs/shapes-small-clip/model"   # a directory saved by ClipModel.save (frozen, recorded by identity)
    pipeline_dir: str | None = None              # also write the trained model into this UnCLIP folder
    train_data: str = ""                         # image(-caption) shards: brace pattern, '::' list or a folder
    num_samples: int = 20_000                    # samples read from train_data (embedded once, held in memory)
    val_samples: int = 256                       # the last ones are held out (sample grids, the prior's cosine)
    # Keep samples whose JSON metadata matches, e.g. ["color=red,blue", "hat=true"] (default: all).
    filter: list = field(default_factory=list)
    ema_decay: float = 0.995
    cond_drop: float = 0.1                       # condition dropout: the null branch of classifier-free guidance

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.cond_drop < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"cond_drop={self.cond_drop}, ema_decay={self.ema_decay}; expected both in [0, 1)")
        if getattr(self, "embeddings", None) is not None:        # the prior may read `clipkit embed` output
            return
        if not self.train_data:
            raise ValueError("train_data is empty; expected shard urls such as 'data/train/{00000..00003}.tar'")
        if self.num_samples <= self.val_samples:
            raise ValueError(f"num_samples={self.num_samples} must exceed val_samples={self.val_samples}")


@dataclass
class PixelTrainConfig(UnclipTrainConfig):
    """What the decoder and the upsampler share: the loss weighting over timesteps and sample grids."""

    loss_weighting: str = "none"                 # none | min_snr (min-SNR-gamma, Hang et al. 2023)
    snr_gamma: float = 5.0                       # gamma of min_snr
    snr_floor: float = 0.0                       # min_snr weights x0 errors by clamp(SNR, floor, gamma); 0 = paper
    sample_every: int | None = None              # steps between sample grids (None: only at the end)

    def validate(self) -> None:
        super().validate()
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting={self.loss_weighting!r} is not one of {LOSS_WEIGHTINGS}")
        if not self.snr_gamma > 0 or not 0 <= self.snr_floor <= self.snr_gamma:
            raise ValueError(f"snr_gamma={self.snr_gamma}, snr_floor={self.snr_floor}; expected snr_gamma > 0 "
                             f"(5 in the paper) and 0 <= snr_floor <= snr_gamma")


@dataclass
class DecoderTrainConfig(PixelTrainConfig):
    out_dir: str = "runs/unclip-decoder"
    lr: float = 2e-3
    batch_size: int = 64
    max_steps: int | None = 3000
    warmup_steps: int = 100
    decoder: DecoderConfig = field(default_factory=DecoderConfig)   # embed_dim is taken from the CLIP


def _upsampler_default() -> DecoderConfig:
    return DecoderConfig(embed_dim=0, image_size=64, low_res_size=32, patch_size=2, channels=(32, 64, 96),
                         attention_levels=(False, False, False), aug_level=0.1)


@dataclass
class UpsamplerTrainConfig(PixelTrainConfig):
    """The super-resolution stage: the target is each shard image at upsampler.image_size, its low-resolution
    input the same image area-averaged to upsampler.low_res_size, noised at a random level in
    [0, aug_level_max] (noise-conditioning augmentation). The CLIP only ties it to its pipeline folder."""

    out_dir: str = "runs/unclip-upsampler"
    lr: float = 2e-3
    batch_size: int = 32
    max_steps: int | None = 2000
    warmup_steps: int = 100
    num_samples: int = 10_000
    aug_level_max: float = 0.5
    upsampler: DecoderConfig = field(default_factory=_upsampler_default)

    def validate(self) -> None:
        super().validate()
        up = self.upsampler
        if not up.low_res_size or up.embed_dim:
            raise ValueError(f"upsampler needs low_res_size > 0 and embed_dim 0 (it is conditioned on the "
                             f"low-resolution image only); got low_res_size={up.low_res_size}, embed_dim={up.embed_dim}")
        if not 0 <= self.aug_level_max < 1:
            raise ValueError(f"aug_level_max={self.aug_level_max}; expected a noise level in [0, 1)")


@dataclass
class PriorTrainConfig(UnclipTrainConfig):
    out_dir: str = "runs/unclip-prior"
    lr: float = 1e-3
    batch_size: int = 256
    max_steps: int | None = 1500
    warmup_steps: int = 50
    prior: PriorConfig = field(default_factory=PriorConfig)         # embed_dim is taken from the CLIP
    # Train on precomputed pairs instead of shards: an embedding folder written by `clipkit embed`
    # (clip-retrieval layout, image + caption embeddings) with the same CLIP.
    embeddings: str | None = None


@dataclass
class ArPriorTrainConfig(UnclipTrainConfig):
    """unCLIP's autoregressive prior (clipkit.unclip.ar_prior): the same data, EMA and text dropout as the
    diffusion prior; the PCA basis and bins are fitted on the training image embeddings first."""

    out_dir: str = "runs/unclip-ar-prior"
    lr: float = 1e-3
    batch_size: int = 256
    max_steps: int | None = 1500
    warmup_steps: int = 50
    ar_prior: ArPriorConfig = field(default_factory=ArPriorConfig)  # embed_dim is taken from the CLIP
    embeddings: str | None = None          # precomputed pairs from `clipkit embed`, as for the diffusion prior
