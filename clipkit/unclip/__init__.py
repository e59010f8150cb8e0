"""unCLIP on CLIP embeddings: a diffusion prior (text embedding -> image embedding) and a
diffusion decoder (image embedding -> pixels), joined in the `UnCLIP` pipeline.

    pipe = clipkit.UnCLIP.load("runs/unclip")
    pipe.generate("a red circle wearing a hat", num_images=4)[0].save("out.png")

Training lives in clipkit.train.unclip (`train_decoder`, `train_prior`), the CLI in
`clipkit train-decoder | train-prior | generate`.
"""

from clipkit.unclip.decoder import EMA, DecoderConfig, DecoderUNet
from clipkit.unclip.pipeline import SAMPLERS, UnCLIP, load_model, save_model, slerp, to_pil, trajectory_strip
from clipkit.unclip.prior import DiffusionPrior, PriorConfig

__all__ = ["UnCLIP", "DecoderConfig", "DecoderUNet", "PriorConfig", "DiffusionPrior", "EMA", "SAMPLERS",
           "load_model", "save_model", "slerp", "to_pil", "trajectory_strip"]
