"""The generation lab: one-shot regression, pixel autoregression and diffusion, measured on shapes images.

    from clipkit.labs.genlab import run_gen_lab
    metrics = run_gen_lab("runs/genlab", quick=False)     # `clipkit gen-lab --out runs/genlab`

world.py    prompts as condition vectors, palette tokens, pixel orders      models.py   the three families
train.py    each model through clipkit.train.loop for a wall-clock budget   measure.py  sampling, counting, judging
figures.py  the pictures                                                    report.py   the five claims, the page
lab.py      the whole run                                                   priors.py   unCLIP's AR prior vs diffusion
"""

from clipkit.labs.genlab.lab import PROMPTS, QUICK, GenLabConfig, run_gen_lab

__all__ = ["run_gen_lab", "GenLabConfig", "QUICK", "PROMPTS"]
