"""Training the unCLIP decoder, prior and upsampler on a frozen CLIP, through the one loop (train/loop.py).

    from clipkit.train.unclip import DecoderTrainConfig, PriorTrainConfig, train_decoder, train_prior
    train_decoder(DecoderTrainConfig(clip="runs/clip/model", train_data="data/train", pipeline_dir="runs/unclip"))
    train_prior(PriorTrainConfig(clip="runs/clip/model", train_data="data/train", pipeline_dir="runs/unclip"))
    train_upsampler(UpsamplerTrainConfig(clip="runs/clip/model", train_data="data/train64", pipeline_dir="runs/unclip"))
    pipe = clipkit.UnCLIP.load("runs/unclip")              # pipe.generate(..., upsample=True): the cascade

Data: any image(-caption) shards (img2dataset layout), images of any size
centre-cropped and resized to the decoder's resolution, corrupt samples skipped
and counted; `filter` keeps samples whose JSON metadata matches. The prior can
instead read the image + caption embeddings that `clipkit embed` wrote with the
same CLIP (`embeddings`). The speed trick: the CLIP is frozen, so every image
(and caption) is embedded ONCE before the loop; the loop then draws random
batches of in-memory uint8 pixels + embeddings (no decoding, no CLIP forward
per step), with a generator seeded by (seed, rank, step), so a resumed run
continues the exact same stream. The EMA weights are part of every checkpoint
(ema.safetensors) and are what gets exported for sampling.

Outputs in out_dir: config.json, metrics.jsonl, curves.png, samples.png (decoder:
top row real images, below their reconstructions; upsampler: real, bicubic from the
low resolution, upsampled), summary.json, checkpoints/, and decoder/, prior/ or
upsampler/ (the EMA model). The upsampler needs no embeddings: its data is the
pixels alone, the target at its resolution and the same image area-averaged. With `pipeline_dir` the model is also
written into that UnCLIP folder together with the CLIP reference (unclip.json).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from clipkit.data.shards import SkipCounter, parse_filters, read_samples
from clipkit.diffusion import NoiseSchedule, loss_weights, training_batch, weighted_mse
from clipkit.images import make_grid
from clipkit.model import load as load_clip_model
from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.train import loop
from clipkit.train.config import (
    ArPriorTrainConfig,
    DecoderTrainConfig,
    PriorTrainConfig,
    UnclipTrainConfig,
    UpsamplerTrainConfig,
)
from clipkit.train.trainer import Trainer, claim_run, row_losses
from clipkit.unclip.ar_prior import ArPrior
from clipkit.unclip.decoder import DecoderUNet, downsample, noise_low_res
from clipkit.unclip.images import to_pil
from clipkit.unclip.pipeline import UnCLIP
from clipkit.unclip.prior import DiffusionPrior
from clipkit.unclip.samplers import noise_schedule
from clipkit.unclip.storage import claim_pipeline, save_model, write_manifest

__all__ = [
    "DecoderTrainConfig",
    "PriorTrainConfig",
    "UpsamplerTrainConfig",
    "ArPriorTrainConfig",
    "train_decoder",
    "train_prior",
    "train_upsampler",
    "train_ar_prior",
    "read_training_data",
    "embedding_pairs",
    "load_clip",
]


# ----------------------------------------------------------------------------- data


def load_clip(path: str):
    """The frozen CLIP a decoder / prior is trained on (a saved directory: it is recorded by identity)."""
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"clip={path!r} is not a directory saved by ClipModel.save (train one with "
            f"`clipkit train`, or save clipkit.create('shapes-small', seed=0))"
        )
    clip = load_clip_model(path, device="cpu")
    clip.model.requires_grad_(False)
    return clip


def _fit(image, size: int):
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)  # centre crop, then resize


def read_training_data(
    config, clip, image_size: int | None, texts: bool, embed: bool = True
) -> tuple[dict, dict, dict]:
    """(train, val, skipped) from config.train_data: uint8 "pixels" (N, 3, S, S) when image_size is given,
    unit "image_emb" (N, D) when embed, and "text_emb" (N, D) when texts. The last val_samples are held out."""
    counter = SkipCounter()
    fields = ("image", "text") if texts else ("image",)
    samples = read_samples(config.train_data, fields, config.num_samples, parse_filters(config.filter), counter)
    if len(samples) <= config.val_samples:
        raise ValueError(
            f"train_data={config.train_data!r} gave {len(samples)} readable samples (skipped: "
            f"{counter.summary()}); need more than val_samples={config.val_samples}"
        )
    images = [s[0] for s in samples]
    data = {"image_emb": clip.encode_images(images, batch_size=512)} if embed else {}
    if image_size:
        arr = np.stack([np.asarray(_fit(im, image_size), dtype=np.uint8) for im in images])
        data["pixels"] = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    if texts:
        data["text_emb"] = clip.encode_texts([s[1] for s in samples], batch_size=512)
    cut = len(samples) - config.val_samples
    return {k: v[:cut] for k, v in data.items()}, {k: v[cut:] for k, v in data.items()}, counter.summary()


def embedding_pairs(folder_path: str, clip, val_samples: int) -> tuple[dict, dict]:
    """(train, val) {"image_emb", "text_emb"} tensors from a `clipkit embed` folder made by `clip`."""
    folder = EmbeddingFolder(folder_path)
    recorded = (folder.info or {}).get("model")
    if recorded != clip.identity:
        raise ValueError(
            f"embeddings={folder_path!r} were made by CLIP {recorded!r}, but clip={clip.identity!r}; "
            f"re-embed with this CLIP (`clipkit embed --model ...`)"
        )
    if "text" not in folder.modalities:
        raise ValueError(f"embeddings={folder_path!r} has no text_emb parts; embed shards with captions")
    img, txt = (np.concatenate(parts) for parts in zip(*[(i, t) for i, t, _ in folder.pairs()]))
    if len(img) <= val_samples:
        raise ValueError(f"embeddings={folder_path!r} holds {len(img)} pairs; need more than val_samples={val_samples}")
    image = torch.from_numpy(np.ascontiguousarray(img, np.float32))
    text = torch.from_numpy(np.ascontiguousarray(txt, np.float32))
    cut = len(image) - val_samples
    return ({"image_emb": image[:cut], "text_emb": text[:cut]}, {"image_emb": image[cut:], "text_emb": text[cut:]})


def _pixels_to_x(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- the shared part


def _fit_rows(trainer: Trainer[UnclipTrainConfig], kind: str, build, train: dict, micro_loss, on_sample=None) -> dict:
    """Build the module (after the trainer's seed), train it with `micro_loss(net, idx, generator)` on random
    rows of `train` with an EMA of its weights; `on_sample(ema_model, step)` every sample_every steps on rank 0.
    Returns {"final": the EMA model, "result": the loop's result}."""
    config = trainer.config
    n = len(next(iter(train.values())))
    module = build()
    trainer.prepare(module, n, final_lr=0.05, ema_decay=config.ema_decay, replacement=True)
    every = getattr(config, "sample_every", None)

    def after_step(step: int) -> None:
        if on_sample and every and step % every == 0 and trainer.accelerator.is_main_process:
            on_sample(trainer.ema_model(), step)

    result = trainer.fit(
        loop.Task(
            next_batches=trainer.random_rows(n), step_losses=row_losses(micro_loss), after_step=after_step, desc=kind
        )
    )
    final = trainer.ema_model()
    loop.check_weights_finite(final, result.step)
    return {"final": final, "result": result}


def _claim(config, clip) -> None:
    """Before any work: the run folder and the pipeline folder must be new, ours (a pipeline of this CLIP)
    or allowed by `overwrite` (clipkit.io's one output rule)."""
    claim_run(config, check_only=True)
    if config.pipeline_dir:
        claim_pipeline(config.pipeline_dir, clip, overwrite=config.overwrite, inputs=[config.clip, config.train_data])
    claim_run(config)


def _export(config, kind, accelerator, clip, module, out_dir: Path) -> list[str]:
    written = []
    if accelerator.is_main_process:
        save_model(module, module.config, out_dir / kind, kind)
        written.append(str(out_dir / kind))
        if config.pipeline_dir:
            pipe = claim_pipeline(config.pipeline_dir, clip, overwrite=config.overwrite)  # checked again: same CLIP
            save_model(module, module.config, pipe / kind, kind, overwrite=config.overwrite)
            write_manifest(pipe, clip, config.clip)
            written.append(str(pipe / kind))
    accelerator.wait_for_everyone()
    return written


def _summary(trainer: Trainer, out: dict, clip, written: list[str], extra: dict) -> dict:
    run, result = trainer.run, out["result"]
    rows = [r for r in run.metrics.rows() if "loss" in r]
    summary = {
        "steps": result.step,
        "train_seconds": round(result.train_seconds, 1),
        "final_loss": rows[-1]["loss"] if rows else None,
        "params": sum(p.numel() for p in out["final"].parameters()),
        "clip_identity": clip.identity,
        "written": written,
        "utilisation": result.utilisation,
        **extra,
    }
    if trainer.accelerator.is_main_process:
        run.metrics.plot(
            run.path / "curves.png", {"loss": ["loss"], "lr": ["lr"]}, title=Path(trainer.config.out_dir).name
        )
    return trainer.write_summary(summary)


# ----------------------------------------------------------------------------- decoder


def train_decoder(config: DecoderTrainConfig) -> dict:
    """Train the decoder (image embedding -> pixels). Returns the summary (also out_dir/summary.json)."""
    config.validate()
    t0 = time.time()
    clip = load_clip(config.clip)
    _claim(config, clip)
    train, val, skipped = read_training_data(config, clip, config.decoder.image_size, texts=False)
    embed_s = time.time() - t0
    print(f"[decoder] embedded {len(train['pixels'])} images in {embed_s:.1f} s")
    model_config = dataclasses.replace(config.decoder, embed_dim=clip.embed_dim)
    schedule = noise_schedule(model_config)

    def build() -> DecoderUNet:
        model = DecoderUNet(model_config)
        model.set_embedding_stats(train["image_emb"])
        return model

    def micro_loss(net, idx, g):
        device = next(net.parameters()).device
        x0 = _pixels_to_x(train["pixels"][idx]).to(device)
        emb = train["image_emb"][idx].to(device)
        xt, t, target = training_batch(schedule, x0, model_config.prediction, generator=g)
        drop = (torch.rand(len(idx), generator=g) < config.cond_drop).to(device)
        weights = loss_weights(
            schedule, t, model_config.prediction, config.loss_weighting, config.snr_gamma, config.snr_floor
        )
        return weighted_mse(net(xt, t, emb, drop=drop), target, weights)

    def on_sample(net, step):
        recon = UnCLIP(clip, net).decode(
            val["image_emb"][:8],
            steps=25,
            sampler="ddim",
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        )
        make_grid(to_pil(_pixels_to_x(val["pixels"][:8])) + recon, columns=8, scale=3).save(
            Path(config.out_dir) / (f"samples_{step:06d}.png" if step else "samples.png")
        )

    with Trainer(config, "decoder") as trainer:
        out = _fit_rows(trainer, "decoder", build, train, micro_loss, on_sample)
        written = _export(config, "decoder", trainer.accelerator, clip, out["final"], trainer.run.path)
        if trainer.accelerator.is_main_process:
            on_sample(out["final"], 0)
        return _summary(
            trainer,
            out,
            clip,
            written,
            {"embed_seconds": round(embed_s, 1), "train_images": len(train["pixels"]), "skipped_samples": skipped},
        )


# ----------------------------------------------------------------------------- prior


def _prior_pairs(config):
    """(clip, train, val, skipped, seconds): text/image embedding pairs for a prior, from `clipkit embed`
    output (`embeddings`) or from shards embedded once by the frozen CLIP."""
    t0 = time.time()
    clip = load_clip(config.clip)
    _claim(config, clip)
    skipped: dict = {}
    if config.embeddings:
        train, val = embedding_pairs(config.embeddings, clip, config.val_samples)
    else:
        train, val, skipped = read_training_data(config, clip, None, texts=True)
    return clip, train, val, skipped, time.time() - t0


def train_prior(config: PriorTrainConfig) -> dict:
    """Train the prior (text embedding -> image embedding) on caption/image embedding pairs."""
    config.validate()
    clip, train, val, skipped, embed_s = _prior_pairs(config)
    model_config = dataclasses.replace(config.prior, embed_dim=clip.embed_dim)
    schedule = NoiseSchedule(model_config.schedule, num_train_timesteps=model_config.num_train_timesteps)
    scale = model_config.scale

    def micro_loss(net, idx, g):
        device = next(net.parameters()).device
        z0 = F.normalize(train["image_emb"][idx], dim=-1).to(device) * scale
        text = train["text_emb"][idx].to(device)
        zt, t, target = training_batch(schedule, z0, model_config.prediction, generator=g)
        drop = (torch.rand(len(idx), generator=g) < config.cond_drop).to(device)
        return F.mse_loss(net(zt, t, text, drop=drop).float(), target)

    with Trainer(config, "prior") as trainer:
        out = _fit_rows(trainer, "prior", lambda: DiffusionPrior(model_config), train, micro_loss)
        written = _export(config, "prior", trainer.accelerator, clip, out["final"], trainer.run.path)
        extra = _prior_check(trainer, clip, out["final"], val)
        return _summary(
            trainer,
            out,
            clip,
            written,
            {
                "embed_seconds": round(embed_s, 1),
                "train_pairs": len(train["image_emb"]),
                **extra,
                "skipped_samples": skipped,
            },
        )


def _prior_check(trainer: Trainer, clip, prior, val: dict) -> dict:
    """Held-out check: cosine of sampled image embeddings to the true ones, vs the text embedding itself."""
    sampled = UnCLIP(clip, None, prior).prior_sample(
        val["text_emb"], guidance_scale=1.0, generator=torch.Generator().manual_seed(0)
    )
    cos_prior = float((sampled * val["image_emb"]).sum(-1).mean())
    cos_text = float((val["text_emb"] * val["image_emb"]).sum(-1).mean())
    trainer.run.metrics.log({"step": trainer.step, "val_cosine_prior": cos_prior, "val_cosine_text": cos_text})
    return {"val_cosine_prior": cos_prior, "val_cosine_text_embedding": cos_text}


# ----------------------------------------------------------------------------- upsampler


def train_upsampler(config: UpsamplerTrainConfig) -> dict:
    """Train the super-resolution stage (low-resolution image -> image) on any image shards: each image at
    upsampler.image_size is the target, the same image area-averaged to low_res_size the condition,
    noised at a random level in [0, aug_level_max] (noise-conditioning augmentation)."""
    config.validate()
    t0 = time.time()
    clip = load_clip(config.clip)
    _claim(config, clip)
    cfg = config.upsampler
    train, val, skipped = read_training_data(config, clip, cfg.image_size, texts=False, embed=False)
    read_s = time.time() - t0
    print(f"[upsampler] read {len(train['pixels'])} images at {cfg.image_size} px in {read_s:.1f} s")
    schedule = noise_schedule(cfg)

    def micro_loss(net, idx, g):
        device = next(net.parameters()).device
        x0 = _pixels_to_x(train["pixels"][idx]).to(device)
        level = torch.rand(len(idx), generator=g) * config.aug_level_max
        low = noise_low_res(downsample(x0, cfg.low_res_size), level.to(device), g)
        xt, t, target = training_batch(schedule, x0, cfg.prediction, generator=g)
        weights = loss_weights(schedule, t, cfg.prediction, config.loss_weighting, config.snr_gamma, config.snr_floor)
        return weighted_mse(net(xt, t, low_res=low, aug_level=level.to(device)), target, weights)

    def on_sample(net, step):
        real = _pixels_to_x(val["pixels"][:8])
        low = downsample(real, cfg.low_res_size)
        bicubic = F.interpolate(low, size=cfg.image_size, mode="bicubic", align_corners=False).clamp(-1, 1)
        x = UnCLIP(clip, upsampler=net).upsample(low, generator=torch.Generator().manual_seed(0), output="tensor")
        make_grid(to_pil(real) + to_pil(bicubic) + to_pil(x), columns=8, scale=2).save(
            Path(config.out_dir) / (f"samples_{step:06d}.png" if step else "samples.png")
        )

    with Trainer(config, "upsampler") as trainer:
        out = _fit_rows(trainer, "upsampler", lambda: DecoderUNet(cfg), train, micro_loss, on_sample)
        written = _export(config, "upsampler", trainer.accelerator, clip, out["final"], trainer.run.path)
        if trainer.accelerator.is_main_process:
            on_sample(out["final"], 0)
        return _summary(
            trainer,
            out,
            clip,
            written,
            {"read_seconds": round(read_s, 1), "train_images": len(train["pixels"]), "skipped_samples": skipped},
        )


# ----------------------------------------------------------------------------- autoregressive prior


def train_ar_prior(config) -> dict:
    """Train unCLIP's autoregressive prior (text embedding -> PCA components of the image embedding, each in
    1,024 bins, predicted in order by a causal transformer) on the same pairs as `train_prior`; its folder
    is ar_prior/ (out_dir and pipeline_dir), loaded by `UnCLIP.load(dir, prior="ar")`."""
    if not isinstance(config, ArPriorTrainConfig):
        raise TypeError(f"train_ar_prior takes an ArPriorTrainConfig, got {type(config).__name__}")
    config.validate()
    clip, train, val, skipped, embed_s = _prior_pairs(config)
    codebook: dict = {}

    def build() -> ArPrior:
        model = ArPrior(dataclasses.replace(config.ar_prior, embed_dim=clip.embed_dim))
        codebook.update(model.fit_codebook(train["image_emb"]))  # before the EMA copies the buffers
        print(
            f"[ar_prior] {model.config.components} components keep {codebook['explained_variance']:.3f} of the "
            f"variance; quantised and decoded, cosine {codebook['reconstruction_cosine']:.4f} to the embeddings"
        )
        return model

    def micro_loss(net, idx, g):
        device = next(net.parameters()).device
        drop = (torch.rand(len(idx), generator=g) < config.cond_drop).to(device)
        return net.loss(train["image_emb"][idx].to(device), train["text_emb"][idx].to(device), drop=drop)

    with Trainer(config, ArPrior.KIND) as trainer:
        out = _fit_rows(trainer, ArPrior.KIND, build, train, micro_loss)
        written = _export(config, ArPrior.KIND, trainer.accelerator, clip, out["final"], trainer.run.path)
        extra = _prior_check(trainer, clip, out["final"], val)
        return _summary(
            trainer,
            out,
            clip,
            written,
            {
                "embed_seconds": round(embed_s, 1),
                "train_pairs": len(train["image_emb"]),
                **extra,
                "codebook": codebook,
                "skipped_samples": skipped,
            },
        )
