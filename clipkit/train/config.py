"""The training configs: what every loop shares (TrainConfig) and each model's own, torch-free.

    TrainConfig          out_dir, seed, steps, batch, optimiser, precision, logging, checkpoints, resume
    ClipTrainConfig      contrastive CLIP / SigLIP training on image-caption shards   (train/clip.py)
    DecoderTrainConfig   the unCLIP decoder on a frozen CLIP                          (train/unclip.py)
    UpsamplerTrainConfig the cascade's super-resolution stage (32 -> 64 px)           (train/unclip.py)
    PriorTrainConfig     the unCLIP prior on a frozen CLIP                            (train/unclip.py)
    ArPriorTrainConfig   unCLIP's autoregressive prior                                (train/unclip.py)

    config = load_config(DecoderTrainConfig, "cfg.json", {"lr": 1e-3})      # clipkit.config: the one reader
    config = parse_config(DecoderTrainConfig, ["--config", "cfg.json", "--decoder.channels", "32", "64"])

A model's own fields are nested, not re-declared: `{"decoder": {"channels": [32, 64, 64]}}`
in JSON, `--decoder.channels 32 64 64` on the command line. Every field needs a default;
`validate()` runs after reading and names the first bad field. Subclass TrainConfig (as a
@dataclass) for a new loop. Torch-free: `clipkit --help` builds its flags from these classes.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from clipkit.config import config_from_dict, to_json
from clipkit.diffusion.names import LOSS_WEIGHTINGS
from clipkit.unclip.config import ArPriorConfig, DecoderConfig, PriorConfig, UpsamplerConfig

MIXED_PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Fields every loop shares. Subclass it (as a @dataclass, fields with defaults) for a loop's own."""

    out_dir: str = "runs/train"  # run folder: config.json, metrics.jsonl, checkpoints/, curves.png
    seed: int = 0
    epochs: int = 1  # passes over the data (an epoch is num_samples // global batch steps)
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    time_budget: float | None = None  # stop after this many seconds of training (wall clock), as at max_steps
    batch_size: int = 64  # per process, per micro-batch (open_clip's convention)
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 5e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float | None = 1.0  # max global gradient norm; None = off
    mixed_precision: str = "no"  # no | bf16 | fp16 (Accelerate autocast; bf16 works on CPU)
    log_every: int = 10  # steps between metrics rows
    eval_every: int | None = None  # steps between evaluations (None: only at the end)
    checkpoint_every: int | None = None  # steps between full-state checkpoints (None: only at the end)
    keep_checkpoints: int = 2  # newest full-state checkpoints kept
    resume: str | None = None  # "latest" or a checkpoint directory
    num_workers: int = 1  # DataLoader workers per process
    tensorboard: bool = False  # also log to TensorBoard through Accelerate trackers
    progress: bool = True  # tqdm bar on rank 0
    num_threads: int | None = None  # intra-op threads per process (None: OMP_NUM_THREADS, else cores / local processes)
    compile: bool = False  # torch.compile the prepared model (Accelerate's dynamo_backend inductor)
    overwrite: bool = False  # write into out_dir / export_dir / pipeline_dir even where clipkit did not
    # write (clipkit.io.check_output_path); their own earlier outputs need no flag

    def __post_init__(self) -> None:
        # Built in Python, a nested model config may be given as a dict of its fields (as in JSON).
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            if isinstance(value, dict) and dataclasses.is_dataclass(tp):
                setattr(self, f.name, config_from_dict(tp, value, f.name))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected >= 1")
        for name in ("max_steps", "eval_every", "checkpoint_every", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r}; expected >= 1 or null")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}; expected > 0")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps}, num_workers={self.num_workers}; expected >= 0")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of {MIXED_PRECISIONS}")

    def to_json(self) -> dict:
        return to_json(self)


LOSSES = ("clip", "siglip")


@dataclass
class ClipTrainConfig(TrainConfig):
    # An architecture preset (clipkit/presets/architectures), an open_clip architecture, an open_clip-style
    # model config (a JSON file, or an object here: embed_dim, vision_cfg, text_cfg) or a saved model directory.
    model: str | dict = "shapes-tiny"
    pretrained: str | None = None  # open_clip tag or weights file for `model` (fine-tuning)
    train_data: str = ""  # shard urls: brace pattern, '::'-separated, or a folder of .tar
    train_num_samples: int | None = None  # samples per epoch; default: from the *_stats.json files
    val_data: str | None = None  # evaluation split: loss, retrieval recall@k (+ evaluators)
    holdout_data: str | None = None  # a second evaluation split, reported as holdout/*
    val_max_samples: int = 2000
    eval_batch_size: int = 500
    zeroshot_eval: list[str] = field(default_factory=list)  # zero-shot datasets (clipkit.evaluation layouts)
    resampled: bool = False  # draw shards with replacement (every rank sees all shards)
    shuffle_buffer: int = 2000  # samples in the shuffle buffer per worker (0 = off)
    crop_scale: float | None = None  # augment with open_clip's train transform: RandomResizedCrop of
    # (crop_scale..1) of the area (open_clip uses 0.9); null = none
    loss: str = "clip"  # clip | siglip (siglip needs a model with a logit_bias)
    logit_scale_max: float = 100.0
    grad_checkpointing: bool = False
    # Fine-tuning: freeze towers as open_clip's --lock-image / --lock-text do.
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0  # last layer groups of the image tower left trainable
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = True
    export_dir: str | None = None  # also save the final model here (default: out_dir/model)

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
    clip: str = "runs/shapes-small-clip/model"  # a directory saved by ClipModel.save (frozen, recorded by identity)
    pipeline_dir: str | None = None  # also write the trained model into this UnCLIP folder
    train_data: str = ""  # image(-caption) shards: brace pattern, '::' list or a folder
    num_samples: int = 20_000  # samples read from train_data (embedded once, held in memory)
    val_samples: int = 256  # the last ones are held out (sample grids, the prior's cosine)
    # Keep samples whose JSON metadata matches, e.g. ["color=red,blue", "hat=true"] (default: all).
    filter: list[str] = field(default_factory=list)
    ema_decay: float = 0.995
    cond_drop: float = 0.1  # condition dropout: the null branch of classifier-free guidance

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.cond_drop < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"cond_drop={self.cond_drop}, ema_decay={self.ema_decay}; expected both in [0, 1)")
        if getattr(self, "embeddings", None) is not None:  # the prior may read `clipkit embed` output
            return
        if not self.train_data:
            raise ValueError("train_data is empty; expected shard urls such as 'data/train/{00000..00003}.tar'")
        if self.num_samples <= self.val_samples:
            raise ValueError(f"num_samples={self.num_samples} must exceed val_samples={self.val_samples}")


@dataclass
class PixelTrainConfig(UnclipTrainConfig):
    """What the decoder and the upsampler share: the loss weighting over timesteps and sample grids."""

    loss_weighting: str = "none"  # none | min_snr (min-SNR-gamma, Hang et al. 2023)
    snr_gamma: float = 5.0  # gamma of min_snr
    snr_floor: float = 0.0  # min_snr weights x0 errors by clamp(SNR, floor, gamma); 0 = paper
    sample_every: int | None = None  # steps between sample grids (None: only at the end)

    def validate(self) -> None:
        super().validate()
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting={self.loss_weighting!r} is not one of {LOSS_WEIGHTINGS}")
        if not self.snr_gamma > 0 or not 0 <= self.snr_floor <= self.snr_gamma:
            raise ValueError(
                f"snr_gamma={self.snr_gamma}, snr_floor={self.snr_floor}; expected snr_gamma > 0 "
                f"(5 in the paper) and 0 <= snr_floor <= snr_gamma"
            )


@dataclass
class DecoderTrainConfig(PixelTrainConfig):
    out_dir: str = "runs/unclip-decoder"
    lr: float = 2e-3
    batch_size: int = 64
    max_steps: int | None = 3000
    warmup_steps: int = 100
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # embed_dim is taken from the CLIP


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
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)  # checks its geometry when read

    def validate(self) -> None:
        super().validate()
        if self.upsampler.embed_dim:
            raise ValueError(
                f"upsampler.embed_dim={self.upsampler.embed_dim}; this trainer conditions the upsampler "
                f"on the low-resolution image only: set embed_dim 0"
            )
        if not 0 <= self.aug_level_max < 1:
            raise ValueError(f"aug_level_max={self.aug_level_max}; expected a noise level in [0, 1)")


@dataclass
class PriorTrainConfig(UnclipTrainConfig):
    out_dir: str = "runs/unclip-prior"
    lr: float = 1e-3
    batch_size: int = 256
    max_steps: int | None = 1500
    warmup_steps: int = 50
    prior: PriorConfig = field(default_factory=PriorConfig)  # embed_dim is taken from the CLIP
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
    embeddings: str | None = None  # precomputed pairs from `clipkit embed`, as for the diffusion prior
