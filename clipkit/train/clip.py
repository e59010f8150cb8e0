"""Contrastive (CLIP / SigLIP) training of a ClipModel on image-caption shards, with Accelerate.

    from clipkit.train.clip import ClipTrainConfig, train_clip
    summary = train_clip(ClipTrainConfig(model="shapes-small", train_data="data/train/{00000..00003}.tar",
                                         val_data="data/val/00000.tar", out_dir="runs/shapes-clip"))

The loop reads like Accelerate's examples: build, `prepare`, loop with
`backward`, checkpoint. What it adds for CLIP:

- data: one webdataset pipeline per epoch (seeded by seed and epoch, so a
  resumed run sees the same order), shards split across ranks and workers
  without duplicates, or drawn with replacement (`resampled`). Batches are
  full (drop-last) so every rank holds the same number of samples, and every
  step all ranks agree that each still has a batch: ranks always take the same
  number of steps, and a rank whose shards ran dry ends the epoch for all.
- loss: clipkit.losses (gather with gradient + local loss across ranks).
- temperature: logit_scale clamped to <= ln(logit_scale_max) after each update;
  no weight decay on it, biases, norms and embeddings.
- outputs in out_dir: config.json, metrics.jsonl, curves.png, summary.json,
  checkpoints/step_*/ (full state for `resume="latest"`), and model/ (a
  ClipModel.save directory, refreshed at every checkpoint and at the end).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from clipkit.train import common
from clipkit.train.common import TrainConfig

LOSSES = ("clip", "siglip")


@dataclass
class ClipTrainConfig(TrainConfig):
    model: str = "shapes-tiny"             # clipkit preset, open_clip architecture, or a saved model directory
    train_data: str = ""                   # shard urls: brace pattern, '::'-separated
    train_num_samples: int | None = None   # samples per epoch; default: from the *_stats.json files
    val_data: str | None = None            # evaluation split (zero-shot needs shapes metadata)
    holdout_data: str | None = None        # a second evaluation split, reported as holdout/*
    val_max_samples: int = 2000
    eval_batch_size: int = 500
    resampled: bool = False                # draw shards with replacement (every rank sees all shards)
    shuffle_buffer: int = 2000             # samples in the shuffle buffer per worker (0 = off)
    crop_scale: float | None = None        # augment with open_clip's train transform: RandomResizedCrop of
                                           # (crop_scale..1) of the area (open_clip uses 0.9); null = none
    loss: str = "clip"                     # clip | siglip (siglip needs a model with a logit_bias)
    logit_scale_max: float = 100.0
    grad_checkpointing: bool = False
    export_dir: str | None = None          # also save the final model here (default: out_dir/model)

    def validate(self) -> None:
        super().validate()
        if not self.train_data:
            raise ValueError("train_data is empty; expected shard urls such as 'data/train/{00000..00003}.tar'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not one of {LOSSES}")
        if self.logit_scale_max <= 1:
            raise ValueError(f"logit_scale_max={self.logit_scale_max}; expected > 1")
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale={self.crop_scale}; expected a fraction of the image area in (0, 1] or null")
        if self.train_num_samples is not None and self.train_num_samples < 1:
            raise ValueError(f"train_num_samples={self.train_num_samples}; expected >= 1")


def _build_model(name: str, seed: int):
    import clipkit

    if Path(name).is_dir():
        return clipkit.load(name, device="cpu")
    return clipkit.create(name, device="cpu", seed=seed)


def train_preprocess(clip, crop_scale: float | None):
    """The image transform for training: the model's own, or open_clip's augmenting train transform.

    open_clip trains with random crops of 90-100% of the area by default; on
    real web data that is a mild regulariser. On the shapes world it slows
    learning (position is an attribute) and lowered holdout shape accuracy
    (0.74 vs 0.83 after 6 epochs), so the shapes configs leave it off.
    """
    if crop_scale is None:
        return clip.preprocess
    import open_clip

    cfg = clip.config.preprocess_cfg
    return open_clip.image_transform(clip.preprocess.size, is_train=True, mean=cfg.get("mean"), std=cfg.get("std"),
                                     interpolation=cfg.get("interpolation"), resize_mode=cfg.get("resize_mode"),
                                     aug_cfg={"scale": (crop_scale, 1.0)})


def _all_ranks_have(accelerator, batch) -> bool:
    """Collective: True when every rank got a batch (a rank out of data ends the epoch for all)."""
    have = torch.tensor([0.0 if batch is None else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        have = accelerator.gather(have)
    return bool(have.min() > 0)


def _skip_totals(accelerator, counter) -> dict[str, int]:
    """Skipped-sample counts summed over ranks (and their workers). Collective."""
    from clipkit.data.shards import SKIP_REASONS

    counts = torch.tensor([counter.summary()[r] for r in SKIP_REASONS], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    return {r: int(c) for r, c in zip(SKIP_REASONS, counts.tolist())}


def train_clip(config: ClipTrainConfig) -> dict:
    """Train, evaluate, checkpoint and export; returns the summary also written to out_dir/summary.json."""
    from clipkit.data.shards import SkipCounter, count_samples, expand_urls, shard_loader, shard_pipeline
    from clipkit.losses import clip_loss, siglip_loss
    from clipkit.train.evaluate import evaluate_clip, load_eval_set

    config.validate()
    started = time.time()
    accelerator = common.make_accelerator(config)
    run = common.RunDir(config.out_dir, accelerator, config.keep_checkpoints)
    run.write_config(config)
    world, rank = accelerator.num_processes, accelerator.process_index

    # ---- model (same init on every rank), optimiser, schedule
    common.seed_everything(config.seed)
    clip = _build_model(config.model, config.seed)
    module = clip.model
    if config.loss == "siglip" and getattr(module, "logit_bias", None) is None:
        raise ValueError(f"loss='siglip' needs a model with a logit_bias (init_logit_bias in its model_cfg); "
                         f"{config.model!r} has none")
    if config.grad_checkpointing:
        module.set_grad_checkpointing(True)
    common.seed_everything(config.seed, rank)

    urls = expand_urls(config.train_data)
    num_samples = config.train_num_samples or count_samples(urls)
    if not num_samples:
        raise ValueError(f"cannot tell how many samples {config.train_data!r} holds (no *_stats.json); "
                         f"set train_num_samples")
    global_batch = config.batch_size * world
    micro_per_epoch = (num_samples // global_batch) // config.grad_accum * config.grad_accum
    if micro_per_epoch == 0:
        raise ValueError(f"{num_samples} samples make no full step of batch_size {config.batch_size} x "
                         f"{world} process(es) x grad_accum {config.grad_accum}; lower batch_size")
    steps_per_epoch = micro_per_epoch // config.grad_accum
    total_steps = config.max_steps or config.epochs * steps_per_epoch

    optimizer = common.adamw(module, config)
    scheduler = common.warmup_cosine(optimizer, config.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(module, optimizer)
    if config.tensorboard:
        accelerator.init_trackers("clip", config={k: v for k, v in config.to_json().items()
                                                  if isinstance(v, (int, float, str, bool))})

    state = run.checkpoints.resume(config.resume, accelerator, model, optimizer, scheduler)
    step, epoch, micro_in_epoch = state.get("step", 0), state.get("epoch", 0), state.get("micro_in_epoch", 0)
    last_checkpoint = state.get("path")
    run.metrics.truncate_after(step)

    eval_sets = {}
    if accelerator.is_main_process:
        for name, urls_ in (("val", config.val_data), ("holdout", config.holdout_data)):
            if urls_:
                eval_sets[name] = load_eval_set(urls_, clip, config.val_max_samples)

    def evaluate() -> dict:
        row = {}
        if accelerator.is_main_process:
            for name, eval_set in eval_sets.items():
                metrics = evaluate_clip(clip, eval_set, config.eval_batch_size)
                row.update({f"{name}/{k}": v for k, v in metrics.items()})
            module.train()
            if row:
                run.metrics.log({"step": step, "epoch": epoch, **row})
        accelerator.wait_for_everyone()
        return row

    def checkpoint() -> str:
        path = run.checkpoints.save(step, accelerator, model, optimizer, scheduler,
                                    {"epoch": epoch, "micro_in_epoch": micro_in_epoch, "samples_per_epoch": num_samples})
        if accelerator.is_main_process:
            clip.save(run.path / "model")
        accelerator.wait_for_everyone()
        return str(path)

    def compute_loss(images, texts):
        out = model(images, texts)
        if config.loss == "siglip":
            return siglip_loss(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        return clip_loss(out["image_features"], out["text_features"], out["logit_scale"])

    accelerator.print(f"training {config.model} on {num_samples} samples x {config.epochs} epoch(s): "
                      f"{total_steps} steps of {global_batch * config.grad_accum} samples "
                      f"({world} process(es), {accelerator.distributed_type}, precision {config.mixed_precision})")
    counter = SkipCounter()
    image_transform = train_preprocess(clip, config.crop_scale)
    bar = common.progress_bar(accelerator, total_steps, initial=step, enabled=config.progress)
    window_loss, window_n, window_start, train_seconds = 0.0, 0, time.time(), 0.0
    last_eval, max_log_scale = {}, math.log(config.logit_scale_max)
    module.train()
    while step < total_steps:
        if micro_in_epoch >= micro_per_epoch:               # resumed from a checkpoint at an epoch's end
            epoch, micro_in_epoch = epoch + 1, 0
        pipeline, _ = shard_pipeline(
            urls, image_transform, clip.tokenizer, batch_size=config.batch_size, shuffle=config.shuffle_buffer,
            resampled=config.resampled, seed=config.seed * 100_003 + epoch, counter=counter, partial=False,
            epoch_batches=math.ceil(micro_per_epoch / max(1, config.num_workers)) if config.resampled else None)
        batches = iter(shard_loader(pipeline, num_workers=config.num_workers))
        for _ in range(micro_in_epoch):                      # resume mid-epoch: replay the data position
            next(batches, None)
        while micro_in_epoch < micro_per_epoch and step < total_steps:
            batch = next(batches, None)
            if not _all_ranks_have(accelerator, batch):
                break
            images, texts = (t.to(accelerator.device, non_blocking=True) for t in batch)
            with accelerator.accumulate(model):
                loss = compute_loss(images, texts)
                loss_value = common.check_finite(accelerator, loss, step, last_checkpoint)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_in_epoch += 1
            window_loss, window_n = window_loss + loss_value, window_n + 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            with torch.no_grad():
                module.logit_scale.clamp_(0, max_log_scale)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                seconds = time.time() - window_start
                train_seconds += seconds
                row = {"step": step, "epoch": epoch, "samples": step * global_batch * config.grad_accum,
                       "loss": window_loss / window_n, "lr": optimizer.param_groups[0]["lr"],
                       "logit_scale": float(module.logit_scale.detach().exp()),
                       "samples_per_s": window_n * global_batch / max(seconds, 1e-9)}
                run.metrics.log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.0f}")
                window_loss, window_n = 0.0, 0
            if config.eval_every and step % config.eval_every == 0 and step < total_steps:
                last_eval = evaluate()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                last_checkpoint = checkpoint()
            if window_n == 0:
                window_start = time.time()                  # evaluation / checkpoint time is not training time
        else:
            if step < total_steps:
                epoch, micro_in_epoch = epoch + 1, 0
            continue
        if step < total_steps:                               # some rank ran out of data: next epoch
            accelerator.print(f"epoch {epoch} ended early at {micro_in_epoch}/{micro_per_epoch} batches "
                              f"(a process ran out of readable samples)")
            epoch, micro_in_epoch = epoch + 1, 0
    bar.close()

    skipped = _skip_totals(accelerator, counter)
    last_checkpoint = checkpoint()
    last_eval = evaluate()
    export = Path(config.export_dir) if config.export_dir else run.path / "model"
    if accelerator.is_main_process and export != run.path / "model":
        clip.save(export)
    summary = {"steps": step, "epochs_completed": step / steps_per_epoch, "samples_seen": step * global_batch * config.grad_accum,
               "processes": world, "seconds": round(time.time() - started, 1),
               "train_seconds": round(train_seconds, 1), "skipped_samples": sum(skipped.values()),
               "skipped_by_reason": skipped, "final_loss": next((r["loss"] for r in reversed(run.metrics.rows()) if "loss" in r), None),
               "eval": last_eval, "checkpoint": last_checkpoint, "model_dir": str(export)}
    if accelerator.is_main_process:
        run.metrics.plot(run.path / "curves.png", {
            "contrastive loss": ["loss", "val/loss", "holdout/loss"],
            "zero-shot accuracy (short prompts)": [f"{s}/zs_{a}" for s in ("val", "holdout")
                                                   for a in ("shape", "color", "size", "position", "hat")],
            "retrieval R@5": ["val/i2t_r5", "val/t2i_r5"]}, title=f"{config.model} - {Path(config.out_dir).name}")
        summary["curves"] = str(run.path / "curves.png")
        run.write_summary(summary)
        if summary["skipped_samples"]:
            print(f"skipped {summary['skipped_samples']} unreadable sample(s): "
                  + ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    accelerator.wait_for_everyone()
    accelerator.end_training()          # trackers closed, process group destroyed (after the barrier above)
    return summary
