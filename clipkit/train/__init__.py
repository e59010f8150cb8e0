"""Training loops on Accelerate.

common.py    what every loop shares: typed config <-> JSON + CLI flags, Accelerator,
             full-state checkpoints with resume, metrics JSONL + curve PNG, guards,
             the clean-exit workaround for entry points
clip.py      contrastive training of a ClipModel (ClipTrainConfig, train_clip)
evaluate.py  val loss, retrieval R@k, zero-shot accuracy per shapes attribute
"""
