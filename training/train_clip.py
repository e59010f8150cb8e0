"""Train a CLIP dual encoder on image-caption shards.

One process:
    accelerate launch training/train_clip.py --config training/configs/shapes-small.json
N CPU processes (gloo, DDP; see clipkit/train/runtime.py):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no training/train_clip.py --config training/configs/shapes-small.json
Any config field can be overridden by a flag: --lr 1e-3 --epochs 2 --resume latest ...
(`clipkit train` runs the same function in-process.)
"""

from clipkit.cli.commands.train import script_main, train
from clipkit.train.config import ClipTrainConfig

if __name__ == "__main__":
    script_main(ClipTrainConfig, train, __doc__.splitlines()[0])
