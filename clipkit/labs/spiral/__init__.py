"""The 2-D spiral lab: diffusion you can see (data, a tiny denoiser, metrics, figures).

from clipkit.labs.spiral import run_spiral_lab
metrics = run_spiral_lab("runs/spiral", quick=False, seed=0)
"""

from clipkit.labs.spiral.lab import QUICK, SpiralLabConfig, compare_samplers, guidance_experiment, run_spiral_lab
from clipkit.labs.spiral.model import SpiralDenoiser, ToyTrainConfig, train_spiral_model
from clipkit.labs.spiral.spiral import CLASSES, NULL_CLASS, SpiralScorer, sample_spiral, spiral_curve

__all__ = [
    "run_spiral_lab",
    "SpiralLabConfig",
    "QUICK",
    "compare_samplers",
    "guidance_experiment",
    "SpiralDenoiser",
    "ToyTrainConfig",
    "train_spiral_model",
    "CLASSES",
    "NULL_CLASS",
    "SpiralScorer",
    "sample_spiral",
    "spiral_curve",
]
