"""The labs: experiments that explain the field with numbers.

spiral/       the 2-D spiral lab (diffusion you can see)
genlab/       the generation lab (one-shot, autoregression, diffusion on shapes images)
finetune.py   fine-tuning and WiSE-FT on the shapes world
"""
