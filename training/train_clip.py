"""Train a CLIP dual encoder on image-caption shards.

One process:
    accelerate launch training/train_clip.py --config training/configs/shapes-small.json
N CPU processes (gloo, DDP; see clipkit/train/common.py):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no training/train_clip.py --config training/configs/shapes-small.json
Any config field can be overridden by a flag: --lr 1e-3 --epochs 2 --resume latest ...
(`clipkit train` runs the same function in-process.)
"""

from clipkit.train import common
from clipkit.train.clip import ClipTrainConfig, train_clip


def main() -> None:
    config = common.parse_config(ClipTrainConfig, description=__doc__.splitlines()[0])
    train_clip(config)


if __name__ == "__main__":
    # The one place that works around the gloo SIGABRT-at-exit trap: see common.exit_cleanly.
    common.exit_cleanly(common.main_guard(main))
