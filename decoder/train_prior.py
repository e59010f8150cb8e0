"""Train the unCLIP diffusion prior (text embedding -> CLIP image embedding) on a frozen CLIP.

    python decoder/train_prior.py --config decoder/configs/shapes-prior.json [--field value ...]
    accelerate launch decoder/train_prior.py --config decoder/configs/shapes-prior.json

Same code as `clipkit train-prior`; see clipkit/train/unclip.py.
"""

from clipkit.cli.commands.train import script_main
from clipkit.train.config import PriorTrainConfig
from clipkit.train.unclip import train_prior

if __name__ == "__main__":
    script_main(PriorTrainConfig, train_prior, __doc__.splitlines()[0])
