"""Train the unCLIP decoder (CLIP image embedding -> pixels) on a frozen CLIP.

    python decoder/train_decoder.py --config decoder/configs/shapes-decoder.json [--field value ...]
    accelerate launch decoder/train_decoder.py --config decoder/configs/shapes-decoder.json

Same code as `clipkit train-decoder`; see clipkit/train/unclip.py.
"""

from clipkit.train import common
from clipkit.train.unclip import DecoderTrainConfig, train_decoder


def main() -> None:
    config = common.parse_config(DecoderTrainConfig, description=__doc__)
    print(train_decoder(config))


if __name__ == "__main__":
    common.exit_cleanly(common.main_guard(main))
