"""Training the unCLIP decoder and prior on a frozen CLIP, with Accelerate.

    from clipkit.train.unclip import DecoderTrainConfig, PriorTrainConfig, train_decoder, train_prior
    train_decoder(DecoderTrainConfig(clip="runs/shapes-small-clip/model", pipeline_dir="runs/unclip"))
    train_prior(PriorTrainConfig(clip="runs/shapes-small-clip/model", pipeline_dir="runs/unclip"))
    pipe = clipkit.UnCLIP.load("runs/unclip")

The speed trick: the CLIP is frozen, so every image (and caption) is embedded
ONCE before the loop; the loop then draws random batches of in-memory uint8
pixels + embeddings (no decoding, no CLIP forward per step). Batches are drawn
with a generator seeded by (seed, rank, step), so a resumed run continues the
exact same stream. The EMA weights are part of every checkpoint (ema.safetensors)
and are what gets exported for sampling.

Outputs in out_dir: config.json, metrics.jsonl, curves.png, samples.png (decoder:
top row real images, below their reconstructions), summary.json, checkpoints/,
and decoder/ or prior/ (the EMA model). With `pipeline_dir` the model is also
written into that UnCLIP folder together with the CLIP reference (unclip.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipkit.train import common
from clipkit.train.common import TrainConfig


@dataclass
class _UnclipData:
    clip: str = "runs/shapes-small-clip/model"   # a directory saved by ClipModel.save (frozen, recorded by identity)
    pipeline_dir: str | None = None              # also write the trained model into this UnCLIP folder
    num_samples: int = 20_000                    # shapes samples to train on (embedded once)
    val_samples: int = 256
    data_seed: int = 0
    image_size: int = 32
    # Restrict the shapes world, e.g. ["color=red,blue", "shape=circle"] (the default: train split as is).
    shapes_filter: list = field(default_factory=list)
    ema_decay: float = 0.995


@dataclass
class DecoderTrainConfig(TrainConfig, _UnclipData):
    out_dir: str = "runs/unclip-decoder"
    lr: float = 2e-3
    weight_decay: float = 0.0
    beta2: float = 0.99
    batch_size: int = 64
    max_steps: int | None = 3000
    warmup_steps: int = 100
    channels: list = field(default_factory=lambda: [64, 128, 128])
    attention_levels: list = field(default_factory=lambda: [False, True, True])
    layers_per_block: int = 1
    patch_size: int = 2
    context_tokens: int = 4
    heads: int = 4
    prediction: str = "sample"
    schedule: str = "cosine"
    cond_drop: float = 0.1
    sample_every: int | None = None              # steps between sample grids (None: only at the end)


@dataclass
class PriorTrainConfig(TrainConfig, _UnclipData):
    out_dir: str = "runs/unclip-prior"
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta2: float = 0.99
    batch_size: int = 256
    max_steps: int | None = 1500
    warmup_steps: int = 50
    width: int = 256
    layers: int = 4
    heads: int = 4
    prediction: str = "sample"
    schedule: str = "cosine"
    cond_drop: float = 0.1
    # Train on precomputed pairs instead of the shapes world: an embedding folder written by
    # `clipkit embed` (clip-retrieval layout, image + caption embeddings) with the same CLIP.
    # Its last `val_samples` rows are held out for the cosine check.
    embeddings: str | None = None


# ----------------------------------------------------------------------------- data

def embedding_pairs(folder_path: str, clip, val_samples: int) -> tuple[dict, dict]:
    """(train, val) {"image_emb", "text_emb"} tensors from a `clipkit embed` folder made by `clip`."""
    from clipkit.embeddings import EmbeddingFolder

    folder = EmbeddingFolder(folder_path)
    recorded = (folder.info or {}).get("model")
    if recorded != clip.identity:
        raise ValueError(f"embeddings={folder_path!r} were made by CLIP {recorded!r}, but clip={clip.identity!r}; "
                         f"re-embed with this CLIP (`clipkit embed --model ...`)")
    if "text" not in folder.modalities:
        raise ValueError(f"embeddings={folder_path!r} has no text_emb parts; embed shards with captions")
    img, txt = (np.concatenate(parts) for parts in zip(*[(i, t) for i, t, _ in folder.pairs()]))
    if len(img) <= val_samples:
        raise ValueError(f"embeddings={folder_path!r} holds {len(img)} pairs; need more than val_samples={val_samples}")
    img, txt = torch.from_numpy(np.ascontiguousarray(img, np.float32)), torch.from_numpy(np.ascontiguousarray(txt, np.float32))
    cut = len(img) - val_samples
    return ({"image_emb": img[:cut], "text_emb": txt[:cut]}, {"image_emb": img[cut:], "text_emb": txt[cut:]})


def _parse_filter(items: list) -> dict:
    from clipkit.data.shapes import ATTRIBUTES, attribute_classes

    from clipkit.data.shapes import BACKGROUNDS

    names = ATTRIBUTES + ("background",)
    out = {}
    for item in items:
        name, _, values = str(item).partition("=")
        if name not in names or not values:
            raise ValueError(f"shapes_filter item {item!r}; expected 'attribute=v1,v2' with attribute in {names}")
        vals = [v.strip() for v in values.split(",")]
        valid = {"hat": ["true", "false"], "background": list(BACKGROUNDS)}.get(name) or \
            [str(c) for c in attribute_classes(name)]
        bad = [v for v in vals if v not in valid]
        if bad:
            raise ValueError(f"shapes_filter {name}={bad} not among {valid}")
        out[name] = [v == "true" for v in vals] if name == "hat" else vals
    return out


def shapes_samples(num: int, seed: int, split: str = "train", filters: list | None = None, image_size: int = 32):
    """Shapes samples: the split's own generator, or uniform draws inside `filters` (see shapes_filter)."""
    from clipkit.data import shapes

    allowed = _parse_filter(filters or [])
    if not allowed:
        return list(shapes.generate(split, num, seed, image_size))
    rng = np.random.default_rng([seed, 7919])
    choices = {"shape": shapes.SHAPES, "color": shapes.COLOR_NAMES, "size": shapes.SIZES,
               "position": shapes.POSITIONS, "background": tuple(shapes.BACKGROUNDS), "hat": (False, True)}
    choices.update(allowed)
    out = []
    for i in range(num):
        picks = {k: v[rng.integers(len(v))] for k, v in choices.items()}
        attrs = shapes.ShapeAttributes(**{k: bool(v) if k == "hat" else str(v) for k, v in picks.items()})
        out.append(shapes.ShapeSample(f"{i:08d}", shapes.render(attrs, image_size), shapes.caption(attrs, rng), attrs))
    return out


def embed_samples(clip, samples, texts: bool = False, batch_size: int = 512) -> dict:
    """uint8 pixels (N, 3, H, W), unit image embeddings (N, D) and optionally caption embeddings."""
    pixels = torch.from_numpy(np.stack([np.asarray(s.image, dtype=np.uint8) for s in samples])).permute(0, 3, 1, 2)
    out = {"pixels": pixels.contiguous(), "image_emb": clip.encode_images([s.image for s in samples], batch_size)}
    if texts:
        out["text_emb"] = clip.encode_texts([s.caption for s in samples], batch_size)
    return out


def load_clip(path: str):
    import clipkit

    if not Path(path).is_dir():
        raise FileNotFoundError(f"clip={path!r} is not a directory saved by ClipModel.save (train one with "
                                f"`clipkit train-clip`, or save clipkit.create('shapes-small', seed=0))")
    clip = clipkit.load(path, device="cpu")
    clip.model.requires_grad_(False)
    return clip


def _pixels_to_x(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- shared loop

def _setup(config, kind: str):
    from clipkit.train.common import RunDir, make_accelerator, seed_everything

    accelerator = make_accelerator(config)                # also sets config.num_threads
    run = RunDir(config.out_dir, accelerator, config.keep_checkpoints)
    run.write_config(config)
    seed_everything(config.seed, accelerator.process_index)
    accelerator.print(f"[{kind}] torch threads {torch.get_num_threads()}, processes {accelerator.num_processes}")
    return accelerator, run


def _step_generator(config, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(config.seed) * 1_000_003 + rank * 10_007 + step)


def _loop(config, kind, accelerator, run, model, batch_loss, total_steps, on_sample=None):
    """Optimise `model` with `batch_loss(model, generator) -> loss`; EMA, checkpoints, metrics. Returns the EMA."""
    from safetensors.torch import load_file, save_file

    from clipkit.unclip.decoder import EMA

    optimizer = common.adamw(model, config)
    scheduler = common.warmup_cosine(optimizer, config.warmup_steps, total_steps, final=0.05)
    ema = EMA(model, config.ema_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = run.checkpoints.resume(config.resume, accelerator, model, optimizer, scheduler)
    step = int(state.get("step", 0))
    if state:
        ema.load_state_dict(load_file(str(Path(state["path"]) / "ema.safetensors")))
    run.metrics.truncate_after(step)
    save_extra = lambda tmp: save_file({k: v.contiguous() for k, v in ema.state_dict().items()},
                                       str(tmp / "ema.safetensors"))
    bar = common.progress_bar(accelerator, total_steps, step, desc=kind, enabled=config.progress)
    start, seen, running = time.time(), 0, []
    model.train()
    while step < total_steps:
        g = _step_generator(config, accelerator.process_index, step)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = batch_loss(model, g)
            value = common.check_finite(accelerator, loss, step)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        ema.update(accelerator.unwrap_model(model))
        step += 1
        seen += config.batch_size * accelerator.num_processes * config.grad_accum
        running.append(value)
        bar.update(1)
        if step % config.log_every == 0 or step == total_steps:
            elapsed = time.time() - start
            run.metrics.log({"step": step, "loss": float(np.mean(running)), "lr": scheduler.get_last_lr()[0],
                             "samples_per_s": seen / max(elapsed, 1e-9), "elapsed_s": elapsed})
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
            run.checkpoints.save(step, accelerator, model, optimizer, scheduler, {"step": step}, extra=save_extra)
        if on_sample and getattr(config, "sample_every", None) and step % config.sample_every == 0:
            on_sample(ema, step)
    bar.close()
    run.checkpoints.save(step, accelerator, model, optimizer, scheduler, {"step": step}, extra=save_extra)
    return ema, time.time() - start


def _export(config, kind, accelerator, clip, module, out_dir: Path) -> list[str]:
    from clipkit.unclip.pipeline import save_model, write_manifest

    written = []
    if accelerator.is_main_process:
        save_model(module, module.config, out_dir / kind, kind)
        written.append(str(out_dir / kind))
        if config.pipeline_dir:
            pipe = Path(config.pipeline_dir)
            manifest = pipe / "unclip.json"
            if manifest.is_file():
                recorded = json.loads(manifest.read_text())["clip"]["identity"]
                if recorded != clip.identity:
                    raise ValueError(f"pipeline_dir={str(pipe)!r} was built with CLIP {recorded!r}, this run used "
                                     f"{clip.identity!r}; use another pipeline_dir or retrain its other model")
            save_model(module, module.config, pipe / kind, kind)
            write_manifest(pipe, clip, config.clip)
            written.append(str(pipe / kind))
    accelerator.wait_for_everyone()
    return written


# ----------------------------------------------------------------------------- decoder

def build_decoder(config: DecoderTrainConfig, embed_dim: int):
    from clipkit.unclip.decoder import DecoderConfig, DecoderUNet

    return DecoderUNet(DecoderConfig(
        embed_dim=embed_dim, image_size=config.image_size, patch_size=config.patch_size,
        channels=tuple(config.channels), layers_per_block=config.layers_per_block,
        attention_levels=tuple(config.attention_levels), heads=config.heads, context_tokens=config.context_tokens,
        prediction=config.prediction, schedule=config.schedule))


def train_decoder(config: DecoderTrainConfig) -> dict:
    """Train the decoder (image embedding -> pixels). Returns the summary (also out_dir/summary.json)."""
    from clipkit.diffusion import NoiseSchedule, training_batch
    from clipkit.images import make_grid
    from clipkit.unclip.pipeline import UnCLIP, to_pil

    config.validate()
    accelerator, run = _setup(config, "decoder")
    t0 = time.time()
    clip = load_clip(config.clip)
    train = embed_samples(clip, shapes_samples(config.num_samples, config.data_seed, "train",
                                               config.shapes_filter, config.image_size))
    val = embed_samples(clip, shapes_samples(8, config.data_seed + 1, "val", config.shapes_filter, config.image_size))
    embed_s = time.time() - t0
    accelerator.print(f"[decoder] embedded {len(train['pixels'])} images in {embed_s:.1f} s")
    model = build_decoder(config, clip.embed_dim)
    model.set_embedding_stats(train["image_emb"])
    schedule = NoiseSchedule(config.schedule)
    n = len(train["pixels"])

    def batch_loss(net, g):
        idx = torch.randint(0, n, (config.batch_size,), generator=g)
        x0 = _pixels_to_x(train["pixels"][idx]).to(accelerator.device)
        emb = train["image_emb"][idx].to(accelerator.device)
        xt, t, target = training_batch(schedule, x0, config.prediction, generator=g)
        drop = (torch.rand(len(idx), generator=g) < config.cond_drop).to(accelerator.device)
        return F.mse_loss(net(xt, t, emb, drop=drop).float(), target)

    def on_sample(ema, step):
        if not accelerator.is_main_process:
            return
        net = build_decoder(config, clip.embed_dim)
        ema.copy_to(net)
        pipe = UnCLIP(clip, net)
        recon = pipe.decode(val["image_emb"], steps=25, sampler="ddim", guidance_scale=3.0, seed=0)
        make_grid(to_pil(_pixels_to_x(val["pixels"])) + recon, columns=8, scale=3).save(
            run.path / f"samples_{step:06d}.png" if step else run.path / "samples.png")

    total = config.max_steps or config.epochs * max(1, n // config.batch_size)
    ema, train_s = _loop(config, "decoder", accelerator, run, model, batch_loss, total, on_sample)
    final = build_decoder(config, clip.embed_dim)
    ema.copy_to(final)
    written = _export(config, "decoder", accelerator, clip, final, run.path)
    if accelerator.is_main_process:
        on_sample(ema, 0)
        run.metrics.plot(run.path / "curves.png", {"loss": ["loss"], "lr": ["lr"]}, title="decoder")
    rows = run.metrics.rows()
    summary = {"steps": total, "train_seconds": round(train_s, 1), "embed_seconds": round(embed_s, 1),
               "final_loss": rows[-1]["loss"] if rows else None, "params": sum(p.numel() for p in final.parameters()),
               "clip_identity": clip.identity, "written": written}
    run.write_summary(summary)
    return summary


# ----------------------------------------------------------------------------- prior

def build_prior(config: PriorTrainConfig, embed_dim: int):
    from clipkit.unclip.prior import DiffusionPrior, PriorConfig

    return DiffusionPrior(PriorConfig(embed_dim=embed_dim, width=config.width, layers=config.layers,
                                      heads=config.heads, prediction=config.prediction, schedule=config.schedule))


def train_prior(config: PriorTrainConfig) -> dict:
    """Train the prior (text embedding -> image embedding) on caption/image embedding pairs."""
    from clipkit.diffusion import NoiseSchedule, training_batch
    from clipkit.unclip.decoder import DecoderConfig, DecoderUNet
    from clipkit.unclip.pipeline import UnCLIP

    config.validate()
    accelerator, run = _setup(config, "prior")
    t0 = time.time()
    clip = load_clip(config.clip)
    if config.embeddings:
        train, val = embedding_pairs(config.embeddings, clip, config.val_samples)
    else:
        train = embed_samples(clip, shapes_samples(config.num_samples, config.data_seed, "train",
                                                   config.shapes_filter), texts=True)
        val = embed_samples(clip, shapes_samples(config.val_samples, config.data_seed + 1, "val",
                                                 config.shapes_filter), texts=True)
    embed_s = time.time() - t0
    model = build_prior(config, clip.embed_dim)
    schedule = NoiseSchedule(config.schedule)
    n, scale = len(train["image_emb"]), model.config.scale

    def batch_loss(net, g):
        idx = torch.randint(0, n, (config.batch_size,), generator=g)
        z0 = F.normalize(train["image_emb"][idx], dim=-1).to(accelerator.device) * scale
        text = train["text_emb"][idx].to(accelerator.device)
        zt, t, target = training_batch(schedule, z0, config.prediction, generator=g)
        drop = (torch.rand(len(idx), generator=g) < config.cond_drop).to(accelerator.device)
        return F.mse_loss(net(zt, t, text, drop=drop).float(), target)

    total = config.max_steps or config.epochs * max(1, n // config.batch_size)
    ema, train_s = _loop(config, "prior", accelerator, run, model, batch_loss, total)
    final = build_prior(config, clip.embed_dim)
    ema.copy_to(final)
    # Held-out check: cosine of sampled image embeddings to the true ones, vs the text embedding itself.
    dummy = DecoderUNet(DecoderConfig(embed_dim=clip.embed_dim, channels=(16, 16), attention_levels=(False, False)))
    pipe = UnCLIP(clip, dummy, final)
    sampled = pipe.prior_sample(val["text_emb"], guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    cos_prior = float((sampled * val["image_emb"]).sum(-1).mean())
    cos_text = float((val["text_emb"] * val["image_emb"]).sum(-1).mean())
    written = _export(config, "prior", accelerator, clip, final, run.path)
    if accelerator.is_main_process:
        run.metrics.log({"step": total, "val_cosine_prior": cos_prior, "val_cosine_text": cos_text})
        run.metrics.plot(run.path / "curves.png", {"loss": ["loss"], "lr": ["lr"]}, title="prior")
    rows = [r for r in run.metrics.rows() if "loss" in r]
    summary = {"steps": total, "train_seconds": round(train_s, 1), "embed_seconds": round(embed_s, 1),
               "train_pairs": n, "final_loss": rows[-1]["loss"] if rows else None, "val_cosine_prior": cos_prior,
               "val_cosine_text_embedding": cos_text, "params": sum(p.numel() for p in final.parameters()),
               "clip_identity": clip.identity, "written": written}
    run.write_summary(summary)
    return summary
