"""`clipkit train`: contrastive training of a CLIP model on shards (what training/train_clip.py runs).

The config comes from `--config FILE` (or the name of a packaged config such as
`shapes-small`) and flags override its fields. On shapes-world shards the
per-attribute zero-shot accuracy is evaluated beside loss and recall.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.config import add_config_arguments
    from clipkit.train.config import ClipTrainConfig

    p = sub.add_parser(
        "train",
        help="train a CLIP model on image-caption shards (Accelerate; resumable)",
        description="Train a CLIP dual encoder. Give a JSON config (training/configs/*.json, or a "
        "packaged name: shapes-small, shapes-tiny) and/or override any field with a "
        "flag. For several processes launch training/train_clip.py with "
        "`accelerate launch` or `torchrun` instead.",
    )
    add_config_arguments(p, ClipTrainConfig)
    p.set_defaults(
        func=run,
        config_cls=ClipTrainConfig,
        interrupted_hint="the run folder keeps its last checkpoint: run the same command with --resume latest to go on",
    )


def config_from_args(cls, args):
    """The config of a training command: a packaged config name is accepted for --config."""
    from pathlib import Path

    from clipkit.config import config_from_args as from_args

    if getattr(args, "config", None) and not Path(args.config).exists() and "/" not in args.config:
        from clipkit.shapes import config_path

        args.config = str(config_path(args.config))
    return from_args(cls, args)


def train(config) -> dict:
    from clipkit.shapes.evaluate import clip_evaluator
    from clipkit.train.clip import train_clip

    # clip_evaluator adds zs_<attribute> where the eval samples carry shapes metadata, nothing elsewhere.
    return train_clip(config, evaluators=(clip_evaluator,))


def run(args) -> int:
    import json

    from clipkit.train.runtime import exit_cleanly, is_distributed, main_guard

    config = config_from_args(args.config_cls, args)
    if is_distributed() or _launched_distributed():
        # Launched as N processes: same clean exit as training/train_clip.py (see runtime.exit_cleanly).
        exit_cleanly(main_guard(lambda: train(config)))
    summary = train(config)
    print(
        json.dumps(
            {k: summary[k] for k in ("steps", "seconds", "skipped_samples", "eval", "model_dir") if k in summary},
            indent=2,
        )
    )
    return 0


def script_main(cls, fn, description: str) -> None:
    """Entry point of the thin scripts in training/ and decoder/: parse flags, run, exit cleanly."""
    from clipkit.config import add_config_arguments
    from clipkit.train.runtime import exit_cleanly, main_guard

    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser, cls)
    args = parser.parse_args()
    # The one place that works around the gloo SIGABRT-at-exit trap: see runtime.exit_cleanly.
    exit_cleanly(main_guard(lambda: print(fn(config_from_args(cls, args)))))


def _launched_distributed() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1
