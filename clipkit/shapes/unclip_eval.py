"""Measuring an unCLIP pipeline on the shapes world with an independent judge, and the demo's pictures.

    from clipkit.shapes.unclip_eval import evaluate_unclip
    metrics = evaluate_unclip(pipe, "runs/unclip-eval", num=64)   # PNGs + metrics.json in the folder
    metrics["judge"]["summary"]          # the judge's own accuracy on real images: print it beside every figure

The primary judge is `clipkit.shapes.judge.ShapesJudge`: a small CNN trained
on the world's true attributes, never on CLIP, so the figures do not grade the
decoder with the CLIP that conditioned it. For every set of generated images:
agreement per attribute with the target (the source image's true attributes, or
the caption's), sharpness against real renders of the same resolution, and the
Frechet distance in the judge's features with the real-vs-real floor. The same
images judged zero-shot by the CLIP (`AttributeJudge`) stay beside, as "clip".
- inversion: decode the CLIP embedding of a held-out real image; agreement with
  its true attributes (all six, background included); CLIP agreement and cosine;
- text -> image: captions naming five attributes, decoded from the text embedding
  directly (unCLIP §5.1), through the prior, through the prior and the upsampler
  (when the pipeline has one) and the prior's output upscaled bicubic x2; plus
  the diversity of several samples of one caption against real renders;
- arithmetic -> pixels: embedding of a hat-less shape + the mean hat vector of
  other pairs (hat_pairs split), decoded; fraction the judge's hat head calls
  "hat", and whether the other attributes survived;
- samplers (DDIM / flow / DDPM) and a decoder guidance sweep (agreement, sharpness,
  diversity: mean per-pixel std across samples of one embedding).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipkit.images import make_grid
from clipkit.io import atomic_file, write_json
from clipkit.io.figures import save_figure
from clipkit.shapes import world as shapes
from clipkit.shapes.judge import ShapesJudge
from clipkit.unclip.pipeline import to_pil

ATTRS = ("shape", "color", "size", "position", "hat")


class AttributeJudge:
    """Zero-shot classifier per shapes attribute (prompt embeddings of `clip`)."""

    def __init__(self, clip):
        self.clip = clip
        self.heads = {a: clip.encode_texts(shapes.attribute_prompts(a)) for a in ATTRS}

    def embed(self, images) -> torch.Tensor:

        if isinstance(images, torch.Tensor):
            images = to_pil(images)
        return self.clip.encode_images(list(images))

    def predict(self, embeddings: torch.Tensor) -> dict:
        return {a: (embeddings @ w.T).argmax(1).numpy() for a, w in self.heads.items()}


def _labels(attrs_list) -> dict:
    return {a: np.array([shapes.attribute_label(x, a) for x in attrs_list]) for a in ATTRS}


def full_caption(attrs: shapes.ShapeAttributes) -> str:
    where = " in the center" if attrs.position == "center" else f" on the {attrs.position}"
    hat = " wearing a hat" if attrs.hat else " without a hat"
    return f"a {attrs.size} {attrs.color} {attrs.shape}{hat}{where}"


def _summarise(pred: dict, truth: dict) -> dict:
    per = {a: float((pred[a] == truth[a]).mean()) for a in ATTRS}
    return {"mean": float(np.mean(list(per.values()))), **per}


def _judged(judge: ShapesJudge, x: torch.Tensor, attrs, attributes=None) -> dict:
    """Agreement with `attrs`, sharpness against renders of `attrs` at x's resolution, Frechet with its floor."""
    renders = [shapes.render(a, int(x.shape[-1])) for a in attrs]
    return {
        "agreement": judge.agreement(x, attrs, attributes),
        "sharpness": judge.sharpness(x, reference=renders),
        "frechet": judge.frechet(x),
        "image_size": int(x.shape[-1]),
    }


def _mean_diversity(rows: list) -> dict:
    return {
        "distinct": {a: float(np.mean([r["distinct"][a] for r in rows])) for a in rows[0]["distinct"]},
        "pixel_distance": float(np.mean([r["pixel_distance"] for r in rows])),
    }


def _save_grid(images, path: Path, columns: int = 8):

    if isinstance(images, torch.Tensor):
        images = to_pil(images)
    with atomic_file(path) as f:
        make_grid(list(images), columns=columns, scale=3).save(f, format="png")


def evaluate_unclip(
    pipe,
    out_dir,
    num: int = 64,
    steps: int = 50,
    decoder_guidance: float = 3.0,
    prior_guidance: float = 2.0,
    seed: int = 0,
    samplers: dict | None = None,
    sweep: tuple = (1.0, 2.0, 3.0, 5.0),
    judge_clip=None,
    judge: ShapesJudge | None = None,
    diversity_prompts: int = 4,
    progress: bool = True,
) -> dict:
    """All measures above on `num` held-out samples; PNGs + metrics.json in out_dir. Returns the metrics.

    samplers: {name: (sampler, steps, num_images)} timed against each other, e.g.
    {"ddpm-1000": ("ddpm", 1000, 16)}; DDIM at `steps` is always measured. judge: a ShapesJudge
    (default: the shipped one); judge_clip: the CLIP of the secondary figures (default: the pipeline's).
    """

    if num < 2:
        raise ValueError(f"num={num}; the Frechet distance needs at least 2 images per set")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge = judge or ShapesJudge.load()
    clip_judge = AttributeJudge(judge_clip or pipe.clip)
    say = print if progress else (lambda *a, **k: None)
    metrics: dict = {
        "num": num,
        "steps": steps,
        "decoder_guidance": decoder_guidance,
        "prior_guidance": prior_guidance,
        "judge": {"summary": judge.accuracy_line(), "real_accuracy": judge.real_accuracy()},
    }
    say(metrics["judge"]["summary"])

    # ---------------------------------------------------------------- inversion
    real = list(shapes.generate("val", num, seed=seed + 101))
    real_attrs = [s.attributes for s in real]
    truth = _labels(real_attrs)
    real_emb = pipe.clip.encode_images([s.image for s in real])
    real_pred = clip_judge.predict(real_emb)
    t0 = time.time()
    decoded = pipe.decode(real_emb, steps=steps, guidance_scale=decoder_guidance, seed=seed, output="tensor")
    dt = time.time() - t0
    dec_emb = clip_judge.embed(decoded)
    dec_pred = clip_judge.predict(dec_emb)
    metrics["inversion"] = {
        **_judged(judge, decoded, real_attrs),  # vs the source image's true attributes
        "seconds_per_image": dt / num,
        "clip": {
            "agreement": _summarise(dec_pred, real_pred),  # CLIP's labels of decoded vs source image
            "accuracy_decoded": _summarise(dec_pred, truth),
            "accuracy_real_images": _summarise(real_pred, truth),
            "cosine": float((F.normalize(dec_emb, dim=-1) * real_emb).sum(-1).mean()),
        },
    }
    pairs = []
    for i in range(min(16, num)):
        pairs += [real[i].image, to_pil(decoded[i : i + 1])[0]]
    _save_grid(pairs, out / "inversion.png", columns=8)
    inv = metrics["inversion"]
    say(
        f"inversion (judge): agreement {inv['agreement']['mean']:.3f}, sharpness {inv['sharpness']['sharpness']:.3f}, "
        f"Frechet {inv['frechet']['ratio']:.2f}x floor; CLIP-judged agreement {inv['clip']['agreement']['mean']:.3f}, "
        f"cosine {inv['clip']['cosine']:.3f}"
    )

    # ---------------------------------------------------------------- text -> image
    rng = np.random.default_rng(seed + 202)
    attrs = [shapes.random_attributes(rng, "train") for _ in range(num)]
    captions = [full_caption(a) for a in attrs]
    ttruth = _labels(attrs)
    text_emb = pipe.clip.encode_texts(captions)
    g = torch.Generator().manual_seed(seed)
    gen = dict(
        num_images=1,
        steps=steps,
        prior_guidance=prior_guidance,
        decoder_guidance=decoder_guidance,
        seed=seed,
        output="tensor",
    )
    via_prior = pipe.generate(captions, **gen)
    direct = pipe.decode(text_emb, steps=steps, guidance_scale=decoder_guidance, generator=g, output="tensor")
    images = {"direct_text_embedding": direct, "with_prior": via_prior}
    if getattr(pipe, "upsampler", None) is not None:  # the cascade, judged at 64 px
        images["with_prior_upsampled"] = pipe.generate(captions, **gen, upsample=True)
    images["with_prior_bicubic_64"] = F.interpolate(
        via_prior, scale_factor=2, mode="bicubic", align_corners=False
    ).clamp(-1, 1)
    methods = {}
    for name, x in images.items():
        methods[name] = {
            **_judged(judge, x, attrs, ATTRS),  # the five attributes the caption names
            "clip_agreement": _summarise(clip_judge.predict(clip_judge.embed(x)), ttruth),
        }
    # Diversity: several samples of one caption vs real renders of it (the caption leaves the background free).
    n_div, k = min(diversity_prompts, num), 4
    samples = pipe.generate(captions[:n_div], **{**gen, "num_images": k, "seed": seed + 1})
    bg = list(shapes.BACKGROUNDS)
    real_div = [
        [shapes.render(replace(a, background=bg[int(b)])) for b in rng.integers(0, len(bg), k)] for a in attrs[:n_div]
    ]
    metrics["text_to_image"] = {
        "with_prior": methods["with_prior"]["agreement"],
        "direct_text_embedding": methods["direct_text_embedding"]["agreement"],
        "methods": methods,
        "diversity": {
            "prompts": n_div,
            "samples_per_prompt": k,
            "generated": _mean_diversity([judge.diversity(samples[i * k : (i + 1) * k]) for i in range(n_div)]),
            "real": _mean_diversity([judge.diversity(r) for r in real_div]),
        },
        "captions_example": captions[:4],
    }
    _save_grid(via_prior[:16], out / "text_to_image_prior.png")
    _save_grid(direct[:16], out / "text_to_image_direct.png")
    for name, m in methods.items():
        say(
            f"text->image {name} ({m['image_size']} px, judge): agreement {m['agreement']['mean']:.3f}, "
            f"sharpness {m['sharpness']['sharpness']:.3f}, Frechet {m['frechet']['ratio']:.2f}x floor; "
            f"CLIP-judged {m['clip_agreement']['mean']:.3f}"
        )

    # ---------------------------------------------------------------- hat arithmetic
    pairs_samples = list(shapes.generate("hat_pairs", 2 * num, seed=seed + 303))
    pe = pipe.clip.encode_images([s.image for s in pairs_samples])
    bare, hat = pe[0::2], pe[1::2]
    half = num // 2
    hat_vector = (hat[:half] - bare[:half]).mean(0)  # from pairs never decoded
    targets = F.normalize(bare[half:] + hat_vector, dim=-1)
    with_hat = pipe.decode(targets, steps=steps, guidance_scale=decoder_guidance, seed=seed, output="tensor")
    without = pipe.decode(bare[half:], steps=steps, guidance_scale=decoder_guidance, seed=seed, output="tensor")
    bare_attrs = [s.attributes for s in pairs_samples[2 * half :: 2]]
    metrics["hat_arithmetic"] = {
        "judged_wearing_hat": float(judge.predict(with_hat)["hat"].mean()),  # the judge's hat head
        "baseline_decoded_without_vector": float(judge.predict(without)["hat"].mean()),
        "other_attributes_kept": judge.agreement(
            with_hat, bare_attrs, ("shape", "color", "size", "position", "background")
        ),
        "num": int(len(targets)),
        "clip": {
            "judged_wearing_hat": float(clip_judge.predict(clip_judge.embed(with_hat))["hat"].mean()),
            "baseline_decoded_without_vector": float(clip_judge.predict(clip_judge.embed(without))["hat"].mean()),
        },
    }
    strip = []
    for i in range(min(8, len(targets))):
        strip += [pairs_samples[2 * (half + i)].image, to_pil(with_hat[i : i + 1])[0]]
    _save_grid(strip, out / "hat_arithmetic.png", columns=8)
    say(
        f"hat arithmetic: {metrics['hat_arithmetic']['judged_wearing_hat']:.3f} judged wearing a hat "
        f"(without the vector {metrics['hat_arithmetic']['baseline_decoded_without_vector']:.3f})"
    )

    # ---------------------------------------------------------------- variations & interpolation
    _save_grid(
        pipe.variations(real[0].image, n=8, steps=steps, guidance_scale=decoder_guidance, seed=seed),
        out / "variations.png",
    )
    _save_grid(
        pipe.interpolate(
            image=(real[0].image, real[1].image), n=8, steps=steps, guidance_scale=decoder_guidance, seed=seed
        ),
        out / "interpolation.png",
    )

    # ---------------------------------------------------------------- samplers
    samplers = {f"ddim-{steps}": ("ddim", steps, num), **(samplers or {})}
    metrics["samplers"] = {}
    for name, (kind, n_steps, n_img) in samplers.items():
        t0 = time.time()
        x = pipe.decode(
            real_emb[:n_img], steps=n_steps, sampler=kind, guidance_scale=decoder_guidance, seed=seed, output="tensor"
        )
        dt = time.time() - t0
        e = clip_judge.embed(x)
        metrics["samplers"][name] = {
            "seconds_per_image": dt / n_img,
            "num": n_img,
            "agreement": judge.agreement(x, real_attrs[:n_img])["mean"],
            "sharpness": judge.sharpness(x)["sharpness"],
            "cosine": float((F.normalize(e, dim=-1) * real_emb[:n_img]).sum(-1).mean()),
        }
        say(f"sampler {name}: {metrics['samplers'][name]}")

    # ---------------------------------------------------------------- guidance sweep
    sweep_rows = []
    n_sw = min(8, num)
    for s in sweep:
        x = pipe.decode(
            real_emb[:n_sw].repeat_interleave(4, 0), steps=steps, guidance_scale=s, seed=seed, output="tensor"
        )
        agree = judge.agreement(x, [a for a in real_attrs[:n_sw] for _ in range(4)])
        diversity = float(x.view(n_sw, 4, -1).std(1).mean())
        sweep_rows.append(
            {
                "scale": s,
                "agreement": agree["mean"],
                "sharpness": judge.sharpness(x)["sharpness"],
                "diversity": diversity,
            }
        )
    metrics["guidance_sweep"] = sweep_rows
    _plot_sweep(sweep_rows, out / "guidance_sweep.png")
    write_json(out / "metrics.json", metrics)
    return metrics


def _plot_sweep(rows, png: Path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    scales = [r["scale"] for r in rows]
    ax.plot(scales, [r["agreement"] for r in rows], "o-", label="agreement (judge)")
    ax.plot(scales, [r["sharpness"] for r in rows], "^-", color="tab:green", label="sharpness (1 = real)")
    ax.set_xlabel("decoder guidance scale")
    ax.set_ylabel("agreement / sharpness")
    ax2 = ax.twinx()
    ax2.plot(scales, [r["diversity"] for r in rows], "s--", color="tab:orange", label="diversity (pixel std)")
    ax2.set_ylabel("diversity")
    fig.legend(loc="lower center", fontsize=7, ncol=3)
    fig.tight_layout()
    save_figure(fig, png, dpi=110)
