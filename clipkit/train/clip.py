"""Contrastive (CLIP / SigLIP) training of a ClipModel on image-caption shards, through the one loop.

    from clipkit.train.clip import ClipTrainConfig, train_clip
    summary = train_clip(ClipTrainConfig(model="shapes-small", train_data="data/train/{00000..00003}.tar",
                                         val_data="data/val/00000.tar", out_dir="runs/shapes-clip"))

What CLIP adds to train/loop.py:

- data (`ShardBatches`): one webdataset pipeline per epoch (seeded by seed and
  epoch, so a resumed run sees the same order, replayed to its position),
  shards split across ranks and workers without duplicates, or drawn with
  replacement (`resampled`). Batches are full (drop-last) and every step all
  ranks agree that each still has a batch, so ranks take the same number of
  steps; an epoch that yields no batch at all is an error, not a hang.
- loss: clipkit.losses (gather with gradient + local loss across ranks). With
  `grad_accum` N > 1 it is open_clip's `--accum-freq`: the N micro-batches'
  features are computed once without gradient, then each micro-batch is run
  again with gradient and its features placed among the others' cached ones,
  so every micro-batch sees the negatives of all N and the summed gradient is
  that of one batch N times larger (the temperature's gradient counted once).
- temperature: logit_scale clamped to <= ln(logit_scale_max) after each step.
- evaluation: val / holdout loss and recall@k (train/evaluate.py), `evaluators`
  (callables per split, e.g. the shapes experiment's attribute accuracy) and
  `zeroshot_eval` datasets (clipkit.evaluation).
- outputs in out_dir: config.json, metrics.jsonl, curves.png, summary.json,
  checkpoints/step_*/ (full state for `resume="latest"`), and model/ (a
  ClipModel.save directory, refreshed at every checkpoint and at the end).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from clipkit import losses
from clipkit.data.shards import SKIP_REASONS, SkipCounter, count_samples, expand_urls, shard_loader, shard_pipeline
from clipkit.evaluation import evaluate_datasets
from clipkit.io import check_output_path
from clipkit.model import resolve_model
from clipkit.train import loop
from clipkit.train.config import ClipTrainConfig
from clipkit.train.evaluate import evaluate_clip, load_eval_set
from clipkit.train.trainer import Trainer, claim_run

__all__ = ["ClipTrainConfig", "train_clip", "train_preprocess", "contrastive_losses"]


def train_preprocess(clip, crop_scale: float | None):
    """The image transform for training: the model's own, or open_clip's augmenting train transform.

    open_clip trains with random crops of 90-100% of the area by default; on
    real web data that is a mild regulariser. On the shapes world it slows
    learning (position is an attribute) and lowered holdout shape accuracy
    (0.74 vs 0.83 after 6 epochs), so the shapes configs leave it off.
    """
    if crop_scale is None:
        return clip.preprocess
    import open_clip  # lazy: seconds of imports, paid only when the augmenting transform is asked for

    cfg = clip.config.preprocess_cfg
    return open_clip.image_transform(
        clip.preprocess.size,
        is_train=True,
        mean=cfg.get("mean"),
        std=cfg.get("std"),
        interpolation=cfg.get("interpolation"),
        resize_mode=cfg.get("resize_mode"),
        aug_cfg={"scale": (crop_scale, 1.0)},
    )


def contrastive_losses(model, micro: list, loss: str = "clip"):
    """The loop's step_losses for CLIP / SigLIP: one (loss, log share) per micro-batch (see the module doc)."""

    def compute(img, txt, out):
        if loss == "siglip":
            return losses.siglip_loss(img, txt, out["logit_scale"], out["logit_bias"])
        return losses.clip_loss(img, txt, out["logit_scale"])

    if len(micro) == 1:
        images, texts = micro[0]
        out = model(images, texts)
        yield compute(out["image_features"], out["text_features"], out), None
        return
    with torch.no_grad():
        cached = [model(images, texts) for images, texts in micro]
    for j, (images, texts) in enumerate(micro):
        out = model(images, texts)
        img = torch.cat([c["image_features"] if i != j else out["image_features"] for i, c in enumerate(cached)])
        txt = torch.cat([c["text_features"] if i != j else out["text_features"] for i, c in enumerate(cached)])
        if j:  # the temperature (and bias) enter every pass: let their gradient through once
            out = {
                k: (v.detach() if k in ("logit_scale", "logit_bias") and v is not None else v) for k, v in out.items()
            }
        value = compute(img, txt, out)
        yield value, value.detach() / len(micro)


def _all_ranks_have(accelerator, batch) -> bool:
    """Collective: True when every rank got a batch (a rank out of data ends the epoch for all)."""
    have = torch.tensor([0.0 if batch is None else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        have = accelerator.gather(have)
    return bool(have.min() > 0)


class ShardBatches:
    """Training micro-batches from shards, epoch after epoch; resumable at (epoch, micro_in_epoch)."""

    def __init__(self, config: ClipTrainConfig, clip, accelerator, micro_per_epoch: int, state: dict):
        self.config, self.clip, self.accelerator = config, clip, accelerator
        self.urls = expand_urls(config.train_data)
        self.micro_per_epoch = micro_per_epoch
        self.epoch, self.micro_in_epoch = int(state.get("epoch", 0)), int(state.get("micro_in_epoch", 0))
        self.counter = SkipCounter()
        self.transform = train_preprocess(clip, config.crop_scale)
        self._batches: Iterator | None = None
        self._yielded_this_epoch = self.micro_in_epoch
        self.passes = 1  # passes over the data started by this run
        self._first_pass_skips: dict | None = None  # a bad sample is met again on every pass

    def _open(self) -> Iterator:
        c = self.config
        pipeline, _ = shard_pipeline(
            self.urls,
            self.transform,
            self.clip.tokenizer,
            batch_size=c.batch_size,
            shuffle=c.shuffle_buffer,
            resampled=c.resampled,
            seed=c.seed * 100_003 + self.epoch,
            counter=self.counter,
            partial=False,
            epoch_batches=math.ceil(self.micro_per_epoch / max(1, c.num_workers)) if c.resampled else None,
        )
        batches = iter(shard_loader(pipeline, num_workers=c.num_workers))
        for _ in range(self.micro_in_epoch):  # resume mid-epoch: replay the data position
            next(batches, None)
        return batches

    def next_batches(self) -> list | None:
        if self.micro_in_epoch >= self.micro_per_epoch:  # a full epoch (or resumed at its end)
            self._next_epoch()
        if self._batches is None:
            self._batches = self._open()
        micro = []
        for _ in range(self.config.grad_accum):
            batch = next(self._batches, None)
            if not _all_ranks_have(self.accelerator, batch):
                return None
            assert batch is not None  # this rank has one (all ranks do)
            micro.append(tuple(t.to(self.accelerator.device, non_blocking=True) for t in batch))
        self.micro_in_epoch += len(micro)
        self._yielded_this_epoch += len(micro)
        return micro

    def end_epoch(self) -> None:
        """The data ran out before the epoch's nominal length: move on, or stop if it yielded nothing."""
        if self._yielded_this_epoch == 0:
            raise ValueError(
                f"epoch {self.epoch} yielded no full batch of {self.config.batch_size} from train_data="
                f"{self.config.train_data!r} (skipped samples: {self.skipped()}); check the shards (empty, "
                f"corrupt, or without captions) or lower batch_size"
            )
        self.accelerator.print(
            f"epoch {self.epoch} ended early at {self.micro_in_epoch}/{self.micro_per_epoch} "
            f"batches (a process ran out of readable samples)"
        )
        self._next_epoch()

    def _next_epoch(self) -> None:
        if self._first_pass_skips is None:
            self._first_pass_skips = self.counter.summary()
        self.epoch, self.micro_in_epoch, self._yielded_this_epoch, self._batches = self.epoch + 1, 0, 0, None
        self.passes += 1

    def state(self) -> dict:
        return {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch}

    def skipped(self) -> dict[str, int]:
        """Samples skipped in one pass over the data, by reason, summed over ranks (and their workers).
        Collective when distributed."""
        seen = self._first_pass_skips or self.counter.summary()
        counts = torch.tensor(
            [seen.get(r, 0) for r in SKIP_REASONS], dtype=torch.float64, device=self.accelerator.device
        )
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return {r: int(c) for r, c in zip(SKIP_REASONS, counts.tolist())}


def _build_clip(config: ClipTrainConfig):
    clip = resolve_model(config.model, pretrained=config.pretrained, device="cpu", seed=config.seed)
    module: Any = clip.model  # open_clip's CLIP, untyped: its set_grad_checkpointing, lock_*_tower
    if config.loss == "siglip" and getattr(module, "logit_bias", None) is None:
        raise ValueError(
            f"loss='siglip' needs a model with a logit_bias (init_logit_bias in its model_cfg); "
            f"{config.model!r} has none"
        )
    if config.grad_checkpointing:
        module.set_grad_checkpointing(True)
    if config.lock_image:
        module.lock_image_tower(
            unlocked_groups=config.lock_image_unlocked_groups, freeze_bn_stats=config.lock_image_freeze_bn_stats
        )
    if config.lock_text:
        module.lock_text_tower(
            unlocked_layers=config.lock_text_unlocked_layers, freeze_layer_norm=config.lock_text_freeze_layer_norm
        )
    return clip


def train_clip(config: ClipTrainConfig, evaluators: tuple[Callable, ...] = ()) -> dict:
    """Train, evaluate, checkpoint and export; returns the summary also written to out_dir/summary.json.

    evaluators: callables (clip, image_features (N, D), eval_set) -> {metric: value}, run on each
    evaluation split beside loss and recall (the shapes experiment passes its attribute accuracy).
    One run at a time per out_dir (a second fails at once, naming the first); export_dir never
    replaces a folder clipkit did not write, nor the training data, unless `overwrite`.
    """
    config.validate()
    export = Path(config.export_dir) if config.export_dir else Path(config.out_dir) / "model"
    model_inputs = [config.model] if isinstance(config.model, str) else []
    inputs = [*config.train_data.split("::"), *expand_urls(config.train_data), *model_inputs]
    claim_run(config, check_only=True)  # refused before any work, not after the training
    check_output_path(export, "clipkit-model", inputs=inputs, overwrite=config.overwrite)
    claim_run(config)
    with Trainer(config, "clip") as trainer:
        return _train_clip(trainer, evaluators, export)


def _train_clip(trainer: Trainer[ClipTrainConfig], evaluators, export: Path) -> dict:
    config, accelerator, run = trainer.config, trainer.accelerator, trainer.run
    started = time.time()
    clip = _build_clip(config)  # after the trainer's seed: the same init on every rank
    module = clip.model
    num_samples = config.train_num_samples or count_samples(expand_urls(config.train_data))
    if not num_samples:
        raise ValueError(
            f"cannot tell how many samples {config.train_data!r} holds (no *_stats.json); set train_num_samples"
        )
    trainer.prepare(module, num_samples, model=clip.config.name)
    steps_per_epoch = trainer.steps_per_epoch
    assert steps_per_epoch is not None  # an epoch of num_samples
    data = ShardBatches(config, clip, accelerator, steps_per_epoch * config.grad_accum, trainer.state)

    eval_sets = {}
    if accelerator.is_main_process:
        for name, urls in (("val", config.val_data), ("holdout", config.holdout_data)):
            if urls:
                eval_sets[name] = load_eval_set(urls, clip, config.val_max_samples)

    def evaluate(step: int) -> dict:
        row = {}
        if accelerator.is_main_process:
            for name, eval_set in eval_sets.items():
                metrics = evaluate_clip(clip, eval_set, config.eval_batch_size, evaluators)
                row.update({f"{name}/{k}": v for k, v in metrics.items()})
            if config.zeroshot_eval:
                row.update(
                    {
                        f"zs/{k}": v
                        for k, v in evaluate_datasets(
                            clip, list(config.zeroshot_eval), config.eval_batch_size, config.val_max_samples
                        ).items()
                    }
                )
            row["epoch"] = data.epoch
        return row

    def export_model(step: int) -> None:
        if accelerator.is_main_process:
            clip.save(run.path / "model")
        accelerator.wait_for_everyone()

    max_log_scale = math.log(config.logit_scale_max)

    def clamp_temperature(step: int) -> None:
        with torch.no_grad():
            module.logit_scale.clamp_(0, max_log_scale)

    task = loop.Task(
        next_batches=data.next_batches,
        on_epoch_end=data.end_epoch,
        data_state=data.state,
        step_losses=lambda m, micro: contrastive_losses(m, micro, config.loss),
        after_step=clamp_temperature,
        evaluate=evaluate,
        on_checkpoint=export_model,
        desc="clip",
        log_extra=lambda: {"epoch": data.epoch, "logit_scale": float(module.logit_scale.detach().exp())},
    )
    result = trainer.fit(task)

    skipped = data.skipped()
    if accelerator.is_main_process and export != run.path / "model":
        clip.save(export, overwrite=trainer.config.overwrite)
    rows = run.metrics.rows()
    summary = {
        "steps": result.step,
        "epochs_completed": result.step / steps_per_epoch,
        "data_passes": data.passes,
        "samples_seen": result.step * trainer.global_batch,
        "processes": trainer.world,
        "seconds": round(time.time() - started, 1),
        "train_seconds": round(result.train_seconds, 1),
        "stopped_by": result.stopped_by,
        "skipped_samples": sum(skipped.values()),
        "skipped_by_reason": skipped,
        "final_loss": next((r["loss"] for r in reversed(rows) if "loss" in r), None),
        "eval": result.eval,
        "checkpoint": result.checkpoint,
        "model_dir": str(export),
        "utilisation": result.utilisation,
    }
    if accelerator.is_main_process:
        zs_keys = sorted({k for r in rows for k in r if "zs_" in k or k.startswith("zs/")})
        run.metrics.plot(
            run.path / "curves.png",
            {
                "contrastive loss": ["loss", "val/loss", "holdout/loss"],
                "zero-shot accuracy": zs_keys,
                "retrieval R@5": ["val/i2t_r5", "val/t2i_r5"],
            },
            title=f"{clip.config.name} - {Path(config.out_dir).name}",
        )
        summary["curves"] = str(run.path / "curves.png")
        trainer.write_summary(summary)
        if summary["skipped_samples"]:
            print(
                f"skipped {summary['skipped_samples']} unreadable sample(s): "
                + ", ".join(f"{k} {v}" for k, v in skipped.items() if v)
            )
    return summary
