"""The generation lab: one-shot regression, pixel autoregression and diffusion on the same prompts and budget.

    metrics = run_gen_lab("runs/genlab", quick=False)   # figures, grids, metrics.json, index.html in the folder

Each model trains through clipkit.train.trainer (the one run setup) for the same time budget
(`budget_seconds` of wall clock, or of CPU time with clock="cpu"), then every method draws
`samples_per_prompt` images for each prompt of PROMPTS and the shapes judge (clipkit.shapes.judge, trained on
the world's true attributes, never on these models) scores them: agreement with
the attributes the prompt names, sharpness, Frechet distance to real renders of
the same prompts, and how many classes of the free attributes appear. What it
tests is in clipkit.labs.genlab.report (the five claims).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from clipkit.diffusion import NoiseSchedule, training_batch
from clipkit.images import make_grid
from clipkit.io import claim_output, write_json
from clipkit.labs.genlab import figures
from clipkit.labs.genlab.measure import Method, generate, score, split_sharpness
from clipkit.labs.genlab.models import OneShot, PixelAR, PixelARConfig, unet_config
from clipkit.labs.genlab.report import write_index
from clipkit.labs.genlab.train import LabTrainConfig, train_lab_model
from clipkit.labs.genlab.world import (
    condition,
    palette_tokens,
    prompt_labels,
    prompt_text,
    random_masks,
    tokens_to_images,
    world_data,
)
from clipkit.perf import torch_threads
from clipkit.shapes.judge import ShapesJudge
from clipkit.unclip.decoder import DecoderUNet
from clipkit.unclip.pipeline import to_pil

LAB_FORMAT = "clipkit-gen-lab"  # the marker of a folder the lab writes into

PROMPTS = (
    {"shape": "circle"},
    {"shape": "square", "color": "red"},
    {"shape": "star", "color": "blue", "size": "large"},
    {"shape": "triangle", "position": "left"},
    {"shape": "heart", "hat": True},
    {"color": "green", "background": "beige"},
    {"shape": "diamond", "color": "yellow", "size": "small", "position": "top", "background": "gray", "hat": False},
    {"shape": "cross", "color": "purple", "size": "large", "position": "center", "background": "white", "hat": True},
)


@dataclass(frozen=True)
class GenLabConfig:
    budget_seconds: float = 90.0  # training time of EVERY model (the same for each family)
    threads: int = 2  # torch threads for training and sampling: 1.6x (UNet) to 2.1x (AR)
    # the steps per second of one thread on this 2-core machine
    clock: str = "wall"  # wall | cpu (genlab.train: CPU time is fairer on a shared machine)
    samples_per_prompt: int = 8
    guidance: float = 2.0  # classifier-free guidance of AR logits and diffusion outputs alike
    ks: tuple = (1, 4, 16, 64)  # AR pixels per step (each order's model trains on all of them)
    k1_share: float = 0.5  # share of AR training batches at k = 1 (the rest split evenly)
    ddim_steps: tuple = (2, 4, 8, 16, 32)
    flow_steps: tuple = (2, 4, 8, 16, 32)
    ddpm_steps: tuple = (16, 64)
    eps_ablation: bool = True  # also train the UNet on the noise target (claim 4's "usual target")
    ar_width: int = 64
    ar_layers: int = 3
    ar_batch: int = 8
    ar_lr: float = 6e-3  # 3e-3 learnt slower in a 120 s A/B (held-out k=1 loss 0.103 vs 0.082)
    unet_channels: tuple = (32, 64, 64)
    unet_batch: int = 32
    unet_lr: float = 2e-3
    cache_check_k: int = 16  # claim 5: KV cache vs recomputation at this k ...
    cache_check_images: int = 4  # ... on this many images
    seed: int = 0


QUICK = GenLabConfig(
    budget_seconds=8.0,
    samples_per_prompt=2,
    ks=(1, 16),
    ddim_steps=(2, 8),
    flow_steps=(4,),
    ddpm_steps=(8,),
    eps_ablation=False,
    ar_layers=2,
    unet_channels=(16, 32, 32),
    cache_check_images=2,
)


# ----------------------------------------------------------------------------- training


def train_models(cfg: GenLabConfig, out: Path, data) -> tuple[dict, dict]:
    """Every model of the lab, each trained for cfg.budget_seconds; returns (models, training stats)."""

    def lab_config(name, batch, lr) -> LabTrainConfig:
        return LabTrainConfig(
            out_dir=str(out / "models" / name),
            time_budget=cfg.budget_seconds,
            clock=cfg.clock,
            batch_size=batch,
            lr=lr,
            seed=cfg.seed,
            warmup_steps=10 if cfg.budget_seconds < 30 else 20,
            num_threads=cfg.threads,
        )

    def cond_of(idx, g):
        return condition(random_masks(data.labels[idx], g))

    models, stats = {}, {}
    schedule = NoiseSchedule("cosine")
    oneshot = OneShot(unet_config("sample", cfg.unet_channels))
    models["oneshot"], stats["oneshot"] = train_lab_model(
        oneshot,
        lambda net, idx, g: F.mse_loss(net(cond_of(idx, g)).float(), data.images[idx]),
        len(data),
        lab_config("oneshot", cfg.unet_batch, cfg.unet_lr),
    )

    rest = [k for k in cfg.ks if k != 1]
    weights = torch.tensor([cfg.k1_share if k == 1 else (1 - cfg.k1_share) / max(1, len(rest)) for k in cfg.ks])
    for order in ("raster", "spread"):
        ar = PixelAR(
            PixelARConfig(
                order=order, order_seed=cfg.seed, width=cfg.ar_width, layers=cfg.ar_layers, block_sizes=tuple(cfg.ks)
            )
        )

        def ar_loss(net, idx, g):
            k = cfg.ks[int(torch.multinomial(weights, 1, generator=g))]
            return net.loss(cond_of(idx, g), data.tokens[idx], k)

        models[f"ar_{order}"], stats[f"ar_{order}"] = train_lab_model(
            ar, ar_loss, len(data), lab_config(f"ar_{order}", cfg.ar_batch, cfg.ar_lr)
        )

    for name, prediction in (("diffusion", "sample"), ("diffusion_eps", "epsilon"))[: 2 if cfg.eps_ablation else 1]:
        unet = DecoderUNet(unet_config(prediction, cfg.unet_channels))
        unet.set_embedding_stats(condition(random_masks(data.labels, torch.Generator().manual_seed(cfg.seed))))

        def diffusion_loss(net, idx, g, prediction=prediction):
            xt, t, target = training_batch(schedule, data.images[idx], prediction, generator=g)
            return F.mse_loss(net(xt, t, cond_of(idx, g)).float(), target)

        models[name], stats[name] = train_lab_model(
            unet, diffusion_loss, len(data), lab_config(name, cfg.unet_batch, cfg.unet_lr)
        )
    return models, stats


def methods(cfg: GenLabConfig) -> list[Method]:
    out = [Method("one-shot", "one-shot", "oneshot")]
    out += [Method(f"ar-{o}-k{k}", f"AR {o}", f"ar_{o}", k=k) for o in ("raster", "spread") for k in cfg.ks]
    for sampler, curve, steps in (
        ("ddim", "DDIM", cfg.ddim_steps),
        ("flow", "flow", cfg.flow_steps),
        ("ddpm", "DDPM", cfg.ddpm_steps),
    ):
        out += [Method(f"{sampler}-{s}", curve, "diffusion", sampler=sampler, steps=s) for s in steps]
    if cfg.eps_ablation:
        out += [
            Method(f"ddim-eps-{s}", "DDIM, noise target", "diffusion_eps", sampler="ddim", steps=s)
            for s in cfg.ddim_steps
        ]
    return out


# ----------------------------------------------------------------------------- the lab


def cache_check(model: PixelAR, conds: torch.Tensor, k: int, seed: int) -> dict:
    """Claim 5: sampling with the KV cache and by recomputing the whole sequence at every step."""
    timings, tokens = {}, {}
    for use_cache in (True, False):
        start = time.perf_counter()
        tokens[use_cache] = model.sample(conds, k, torch.Generator().manual_seed(seed), use_cache=use_cache)
        timings[use_cache] = (time.perf_counter() - start) / len(conds)
    n, p = model.config.side**2, model.config.cond_tokens
    recomputed = sum(p + (b + 1) * k for b in range(n // k))  # token positions run, per image
    return {
        "k": k,
        "images": len(conds),
        "tokens_equal": bool(torch.equal(tokens[True], tokens[False])),
        "seconds_per_image_cache": timings[True],
        "seconds_per_image_recompute": timings[False],
        "positions_cache": p + n,
        "positions_recompute": recomputed,
        "training_predictions_per_pass": n,
    }


def run_gen_lab(
    out_dir: str | os.PathLike,
    quick: bool = False,
    seed: int = 0,
    config: GenLabConfig | None = None,
    models: dict | None = None,
    prior_comparison: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Train, sample, judge and draw; writes PNGs, grids/, metrics.json and index.html to out_dir.
    models: already trained models by name (skips training). Returns the metrics. out_dir must be new,
    empty or a previous lab's (clipkit.io.claim_output); anything else needs `overwrite`."""

    cfg = replace(config or (QUICK if quick else GenLabConfig()), seed=seed)
    out = claim_output(out_dir, LAB_FORMAT, overwrite=overwrite)
    with torch_threads(cfg.threads):
        return _run(cfg, out, quick, models, prior_comparison)


def _run(cfg: GenLabConfig, out: Path, quick: bool, models: dict | None, prior_comparison: dict | None) -> dict:

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = world_data(32)
    judge = ShapesJudge.load()
    if models is None:
        models, train_stats = train_models(cfg, out, data)
    else:
        train_stats = {}
    train_seconds = time.perf_counter() - t_start

    # The prompts, each repeated samples_per_prompt times; two independent sets of real renders answering them.
    n = cfg.samples_per_prompt
    labels = torch.stack([prompt_labels(p) for p in PROMPTS]).repeat_interleave(n, 0)  # (P*n, 6)
    prompt_of = torch.arange(len(PROMPTS)).repeat_interleave(n)
    conds = condition(labels)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    real_idx = [torch.cat([data.matching(prompt_labels(p), n, g) for p in PROMPTS]) for _ in range(2)]
    real, real_floor = data.images[real_idx[0]], data.images[real_idx[1]]
    full = (labels >= 0).all(1)

    results = {}
    reference = {
        "real renders": real_floor,
        "real renders, palette colours": tokens_to_images(palette_tokens(real_floor), 32),
    }
    for name, images in reference.items():
        results[name] = {
            **score(judge, images, labels, prompt_of, real, real_floor),
            "evaluations": 0,
            "seconds_per_image": 0.0,
            "curve": "real",
            "family": "real",
        }
    samples = {}
    for method in methods(cfg):
        images, evals, secs = generate(
            method, models, conds, cfg.guidance, torch.Generator().manual_seed(cfg.seed + 11)
        )
        samples[method.name] = images
        results[method.name] = {
            **score(judge, images, labels, prompt_of, real, real_floor),
            **split_sharpness(judge, images, full),
            "evaluations": evals,
            "seconds_per_image": secs,
            "curve": method.curve,
            "family": method.family,
            "k": method.k,
            "sampler": method.sampler,
            "steps": method.steps,
        }
        print(
            f"[gen-lab] {method.name:<14} evals {evals:>7.0f}  "
            f"agreement {results[method.name]['agreement']['mean']:.3f}"
            f"  sharpness {results[method.name]['sharpness']:.3f}  {secs:.3f} s/image",
            flush=True,
        )

    cache = cache_check(models["ar_raster"], conds[: cfg.cache_check_images], cfg.cache_check_k, cfg.seed)

    # ---------------------------------------------------------------- pictures
    grids = out / "grids"
    grids.mkdir(exist_ok=True)
    texts = [prompt_text(p) for p in PROMPTS]
    make_grid(to_pil(real), columns=n, scale=3).save(grids / "real.png")
    strips = [("real renders", make_grid(to_pil(real[::n]), columns=len(PROMPTS), scale=2))]
    for name, images in samples.items():
        make_grid(to_pil(images), columns=n, scale=3).save(grids / f"{name}.png")  # prompts x samples
        strips.append(
            (
                f"{name} ({results[name]['evaluations']:.0f} ev)",
                make_grid(to_pil(images[::n]), columns=len(PROMPTS), scale=2),
            )
        )
    figures.samples_figure(out / "samples.png", strips, texts)
    rows = [
        {
            "curve": r["curve"],
            "label": f"k={r['k']}" if r["k"] else "",
            "evaluations": r["evaluations"],
            "agreement": r["agreement"]["mean"],
            "frechet_ratio": r["frechet_ratio"],
            "sharpness": r["sharpness"],
        }
        for r in results.values()
        if r["family"] != "real"
    ]
    real_row = results["real renders"]
    figures.quality_figure(
        out / "quality_vs_evaluations.png",
        rows,
        {"agreement": real_row["agreement"]["mean"], "frechet_ratio": real_row["frechet_ratio"]},
    )
    curves = {
        name: [(r["train_seconds"], r["loss"]) for r in _rows(out / "models" / name / "metrics.jsonl") if "loss" in r]
        for name in models
    }
    figures.training_figure(out / "training.png", curves)

    metrics = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "quick": quick,
        "prompts": [{"prompt": t, "attributes": p} for t, p in zip(texts, PROMPTS)],
        "judge": judge.accuracy_line(),
        "training": train_stats,
        "results": results,
        "kv_cache": cache,
        "threads": cfg.threads,
        "train_wall_seconds": round(train_seconds, 1),
        "figures": ["quality_vs_evaluations.png", "samples.png", "training.png"],
        "grids": ["real"] + list(samples),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if prior_comparison is not None:
        metrics["priors"] = prior_comparison
    write_json(out / "metrics.json", metrics)
    write_index(out / "index.html", metrics)
    return metrics


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


__all__ = ["GenLabConfig", "QUICK", "PROMPTS", "run_gen_lab", "train_models", "methods", "cache_check"]
