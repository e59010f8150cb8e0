"""Train the unCLIP diffusion prior (text embedding -> CLIP image embedding) on a frozen CLIP.

    python decoder/train_prior.py --config decoder/configs/shapes-prior.json [--field value ...]
    accelerate launch decoder/train_prior.py --config decoder/configs/shapes-prior.json

Same code as `clipkit train-prior`; see clipkit/train/unclip.py.
"""

from clipkit.train import common
from clipkit.train.unclip import PriorTrainConfig, train_prior


def main() -> None:
    config = common.parse_config(PriorTrainConfig, description=__doc__)
    print(train_prior(config))


if __name__ == "__main__":
    common.exit_cleanly(common.main_guard(main))
