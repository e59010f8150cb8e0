"""Train the unCLIP decoder (CLIP image embedding -> pixels) on a frozen CLIP.

    python decoder/train_decoder.py --config decoder/configs/shapes-decoder.json [--field value ...]
    accelerate launch decoder/train_decoder.py --config decoder/configs/shapes-decoder.json

Same code as `clipkit train-decoder`; see clipkit/train/unclip.py.
"""

from clipkit.cli.commands.train import script_main
from clipkit.train.config import DecoderTrainConfig
from clipkit.train.unclip import train_decoder

if __name__ == "__main__":
    script_main(DecoderTrainConfig, train_decoder, __doc__.splitlines()[0])
