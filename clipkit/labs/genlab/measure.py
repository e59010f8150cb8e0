"""Running every method on the same prompts, counting network evaluations, and scoring with the judge.

    images, evals, seconds = generate(method, models, conds, guidance=2.0, generator=g)
    row = score(judge, images, labels, prompt_of, real)   # agreement, sharpness, Frechet, diversity

Network evaluations per image are counted, not computed: every call of a
network adds the rows it processed (EvalCounter), so a guided step on B images
adds 2B, and evaluations per image = rows / images. Seconds per image is the
wall clock of the whole batched call divided by the images (the machine may be
shared; the report says so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from clipkit.diffusion import DDIMSampler, DDPMSampler, FlowAdapter, FlowMatchSampler, NoiseSchedule, sample
from clipkit.labs.genlab.models import EvalCounter
from clipkit.labs.genlab.world import ATTRIBUTES, CLASSES, null_condition, tokens_to_images
from clipkit.shapes.judge import frechet_distance

SAMPLERS = ("ddim", "ddpm", "flow")


@dataclass(frozen=True)
class Method:
    name: str  # e.g. "ar-raster-k4", "ddim-16", "one-shot"
    curve: str  # the figure's legend entry: "AR raster", "DDIM", ...
    model: str  # key of the trained model: "oneshot", "ar_raster", "ar_spread", "diffusion", ...
    k: int | None = None  # pixels per step (autoregressive)
    sampler: str | None = None  # ddim | ddpm | flow (diffusion)
    steps: int | None = None

    @property
    def family(self) -> str:
        return "one-shot" if self.model == "oneshot" else "autoregressive" if self.k else "diffusion"


def diffusion_sampler(name: str, schedule, prediction: str):
    """The clipkit.diffusion sampler for `name`, and how to call the model with it (flow runs the discrete
    model through FlowAdapter). Discrete samplers use "trailing" spacing: few steps still start at pure noise."""

    if name == "ddim":
        return DDIMSampler(
            schedule, eta=0.0, prediction_type=prediction, clip_x0=1.0, timestep_spacing="trailing"
        ), None
    if name == "ddpm":
        return DDPMSampler(schedule, prediction_type=prediction, clip_x0=1.0, timestep_spacing="trailing"), None
    if name == "flow":
        return FlowMatchSampler(clip_x0=1.0), lambda m: FlowAdapter(m, schedule, prediction)
    raise ValueError(f"sampler={name!r} is not one of {SAMPLERS}")


@torch.no_grad()
def generate(
    method: Method,
    models: dict,
    conds: torch.Tensor,
    guidance: float,
    generator: torch.Generator,
    use_cache: bool = True,
) -> tuple[torch.Tensor, float, float]:
    """(images (N, 3, S, S) in [-1, 1], network evaluations per image, seconds per image) for `conds`."""

    model = models[method.model]
    counter = EvalCounter()
    n = len(conds)
    start = time.perf_counter()
    if method.model == "oneshot":
        counter.add(n)
        images = model(conds).clamp(-1, 1)
    elif method.k:
        tokens = model.sample(
            conds,
            method.k,
            generator,
            guidance_scale=guidance,
            uncond=null_condition(),
            use_cache=use_cache,
            counter=counter,
        )
        images = tokens_to_images(tokens, model.config.side)
    else:
        assert method.sampler is not None and method.steps is not None  # a diffusion method names both
        cfg = model.config
        schedule = NoiseSchedule(cfg.schedule, num_train_timesteps=cfg.num_train_timesteps)
        sampler, adapt = diffusion_sampler(method.sampler, schedule, cfg.prediction)
        fn = counter.wrap(adapt(model) if adapt else model)
        images = sample(
            fn,
            (n, cfg.in_channels, cfg.image_size, cfg.image_size),
            sampler,
            method.steps,
            cond=conds,
            uncond=null_condition(),
            guidance_scale=guidance,
            generator=generator,
        ).clamp(-1, 1)
    seconds = time.perf_counter() - start
    return images.float(), counter.per_image(n), seconds / n


# ----------------------------------------------------------------------------- scoring


def agreement(pred: dict, labels: torch.Tensor) -> dict:
    """Judged class == prompted class over every (image, attribute the prompt names); and per attribute."""
    out, hits, total = {}, 0, 0
    for j, a in enumerate(ATTRIBUTES):
        named = (labels[:, j] >= 0).numpy()
        if named.any():
            ok = pred[a][named] == labels[named, j].numpy()
            out[a] = float(ok.mean())
            hits, total = hits + int(ok.sum()), total + int(named.sum())
    return {"mean": hits / max(total, 1), **out}


def score(
    judge,
    images: torch.Tensor,
    labels: torch.Tensor,
    prompt_of: torch.Tensor,
    real: torch.Tensor,
    real_floor: torch.Tensor,
) -> dict:
    """Every measure of one method's images.

    labels (N, 6) the prompted classes (-1 = free); prompt_of (N,) which prompt each image answers;
    real / real_floor: two independent sets of real renders answering the same prompts in the same order
    (the Frechet reference and the real-vs-real floor)."""

    pred = judge.predict(images)
    sharp = judge.sharpness(images)
    f_real = judge.features(real)
    fd = frechet_distance(judge.features(images), f_real)
    floor = frechet_distance(judge.features(real_floor), f_real)
    free_cover, pixel = [], []
    for p in prompt_of.unique().tolist():
        rows = (prompt_of == p).nonzero()[:, 0]
        free = [a for j, a in enumerate(ATTRIBUTES) if labels[rows[0], j] < 0]
        if not free or len(rows) < 2:
            continue
        d = judge.diversity(images[rows])
        free_cover.append(np.mean([min(d["distinct"][a], len(rows)) / min(len(CLASSES[a]), len(rows)) for a in free]))
        pixel.append(d["pixel_distance"])
    first = (prompt_of == prompt_of[0]).nonzero()[:, 0]
    circle = judge.diversity(images[first])
    return {
        "agreement": agreement(pred, labels),
        "sharpness": sharp["sharpness"],
        "palette": sharp["palette"],
        "edge_ratio": sharp["edge_ratio"],
        "frechet": fd,
        "frechet_floor": floor,
        "frechet_ratio": fd / floor,
        "free_coverage": float(np.mean(free_cover)) if free_cover else None,
        "pixel_diversity": float(np.mean(pixel)) if pixel else None,
        "first_prompt_distinct": circle["distinct"],
    }


def split_sharpness(judge, images: torch.Tensor, full: torch.Tensor) -> dict:
    """Sharpness of the images of fully named prompts (one correct image) vs partly named ones (many)."""
    out = {}
    for name, rows in (("full_prompts", full), ("partial_prompts", ~full)):
        if rows.any():
            out[name] = judge.sharpness(images[rows])["sharpness"]
    return out
