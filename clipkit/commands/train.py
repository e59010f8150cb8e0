"""`clipkit train`: contrastive training of a CLIP model on shards (what training/train_clip.py runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.train.clip import ClipTrainConfig
    from clipkit.train.common import add_config_arguments

    p = sub.add_parser("train", help="train a CLIP model on image-caption shards (Accelerate; resumable)",
                       description="Train a CLIP dual encoder. Give a JSON config (training/configs/*.json) "
                                   "and/or override any field with a flag. For several processes launch "
                                   "training/train_clip.py with `accelerate launch` instead.")
    add_config_arguments(p, ClipTrainConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from clipkit.train.clip import ClipTrainConfig, train_clip
    from clipkit.train.common import config_from_args, exit_cleanly, is_distributed, main_guard

    config = config_from_args(ClipTrainConfig, args)
    if is_distributed() or _launched_distributed():
        # Launched as N processes: same clean exit as training/train_clip.py (see common.exit_cleanly).
        exit_cleanly(main_guard(lambda: train_clip(config)))
    summary = train_clip(config)
    print(json.dumps({k: summary[k] for k in ("steps", "seconds", "skipped_samples", "eval", "model_dir")
                      if k in summary}, indent=2))
    return 0


def _launched_distributed() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1
