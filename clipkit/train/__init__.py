"""Training on Accelerate: one run setup and one loop for every model.

config.py      TrainConfig, ClipTrainConfig, DecoderTrainConfig, PriorTrainConfig, ... (torch-free; read by
               clipkit.config, the one reader)
runtime.py     Accelerator, threads, seeding, the finite-loss guard, clean exit for entry points
optim.py       AdamW parameter groups, warm-up + cosine schedule, weight EMA
checkpoint.py  full-state checkpoints (atomic, retained, resumable bit for bit)
metrics.py     run folder: config.json, metrics.jsonl, curves.png, summary.json
loop.py        the one training loop (`train_loop`, `Task` hooks, `should_stop`)
trainer.py     the one run setup (`Trainer`): lock, accelerator, run folder, seeds, resume, time budget
fit.py         `clipkit fit`: CLIP -> prior -> decoder (-> upsampler) -> index and report, under one budget
clip.py        contrastive CLIP / SigLIP training (`train_clip`)
unclip.py      the unCLIP decoder, prior, upsampler and AR prior (`train_decoder`, `train_prior`, ...)
evaluate.py    val loss, retrieval R@k (+ pluggable evaluators)
"""
