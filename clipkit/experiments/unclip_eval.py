"""Measuring an unCLIP pipeline on the shapes world, with a CLIP as the judge, and the demo's pictures.

    from clipkit.experiments.unclip_eval import evaluate_unclip
    metrics = evaluate_unclip(pipe, "runs/unclip-eval", num=64)   # PNGs + metrics.json in the folder

Every measure classifies generated images zero-shot, one attribute at a time
(shape, colour, size, position, hat) with the shapes prompts:
- inversion: decode the embedding of a held-out real image; agreement of the
  judge's labels for decoded vs real image, accuracy vs the true attributes, and
  the cosine between the decoded image's embedding and the source embedding;
- text -> image: captions naming all five attributes, through the prior vs the
  text embedding decoded directly (unCLIP §5.1), accuracy vs the caption;
- arithmetic -> pixels: embedding of a hat-less shape + the mean hat vector of
  other pairs (hat_pairs split), decoded; fraction judged "wearing a hat";
- samplers (DDIM / flow / DDPM) and a decoder guidance sweep (accuracy and
  diversity: mean per-pixel std across samples of one embedding).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipkit.data import shapes
from clipkit.io import write_json

ATTRS = ("shape", "color", "size", "position", "hat")


class AttributeJudge:
    """Zero-shot classifier per shapes attribute (prompt embeddings of `clip`)."""

    def __init__(self, clip):
        self.clip = clip
        self.heads = {a: clip.encode_texts(shapes.attribute_prompts(a)) for a in ATTRS}

    def embed(self, images) -> torch.Tensor:
        from clipkit.unclip.pipeline import to_pil

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


def _save_grid(images, path: Path, columns: int = 8):
    from clipkit.images import make_grid
    from clipkit.unclip.pipeline import to_pil

    if isinstance(images, torch.Tensor):
        images = to_pil(images)
    make_grid(list(images), columns=columns, scale=3).save(path)


def evaluate_unclip(pipe, out_dir, num: int = 64, steps: int = 50, decoder_guidance: float = 3.0,
                    prior_guidance: float = 2.0, seed: int = 0, samplers: dict | None = None,
                    sweep: tuple = (1.0, 2.0, 3.0, 5.0), judge_clip=None, progress: bool = True) -> dict:
    """All measures above on `num` held-out samples; PNGs + metrics.json in out_dir. Returns the metrics.

    samplers: {name: (sampler, steps, num_images)} timed against each other, e.g.
    {"ddpm-1000": ("ddpm", 1000, 16)}; DDIM at `steps` is always measured.
    """
    from clipkit.unclip.pipeline import to_pil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge = AttributeJudge(judge_clip or pipe.clip)
    say = print if progress else (lambda *a, **k: None)
    metrics: dict = {"num": num, "steps": steps, "decoder_guidance": decoder_guidance,
                     "prior_guidance": prior_guidance}

    # ---------------------------------------------------------------- inversion
    real = list(shapes.generate("val", num, seed=seed + 101))
    truth = _labels([s.attributes for s in real])
    real_emb = pipe.clip.encode_images([s.image for s in real])
    real_pred = judge.predict(real_emb)
    t0 = time.time()
    decoded = pipe.decode(real_emb, steps=steps, guidance_scale=decoder_guidance, seed=seed, output="tensor")
    dt = time.time() - t0
    dec_emb = judge.embed(decoded)
    dec_pred = judge.predict(dec_emb)
    metrics["inversion"] = {
        "agreement": _summarise(dec_pred, real_pred),
        "accuracy_decoded": _summarise(dec_pred, truth),
        "accuracy_real_images": _summarise(real_pred, truth),
        "cosine": float((F.normalize(dec_emb, dim=-1) * real_emb).sum(-1).mean()),
        "seconds_per_image": dt / num,
    }
    pairs = []
    for i in range(min(16, num)):
        pairs += [real[i].image, to_pil(decoded[i:i + 1])[0]]
    _save_grid(pairs, out / "inversion.png", columns=8)
    say(f"inversion: agreement {metrics['inversion']['agreement']['mean']:.3f}, "
        f"cosine {metrics['inversion']['cosine']:.3f}")

    # ---------------------------------------------------------------- text -> image
    rng = np.random.default_rng(seed + 202)
    attrs = [shapes.random_attributes(rng, "train") for _ in range(num)]
    captions = [full_caption(a) for a in attrs]
    ttruth = _labels(attrs)
    text_emb = pipe.clip.encode_texts(captions)
    g = torch.Generator().manual_seed(seed)
    via_prior = pipe.generate(captions, num_images=1, steps=steps, prior_guidance=prior_guidance,
                              decoder_guidance=decoder_guidance, seed=seed, output="tensor")
    direct = pipe.decode(text_emb, steps=steps, guidance_scale=decoder_guidance, generator=g, output="tensor")
    metrics["text_to_image"] = {"with_prior": _summarise(judge.predict(judge.embed(via_prior)), ttruth),
                                "direct_text_embedding": _summarise(judge.predict(judge.embed(direct)), ttruth),
                                "captions_example": captions[:4]}
    _save_grid(via_prior[:16], out / "text_to_image_prior.png")
    _save_grid(direct[:16], out / "text_to_image_direct.png")
    say(f"text->image: prior {metrics['text_to_image']['with_prior']['mean']:.3f}, "
        f"direct {metrics['text_to_image']['direct_text_embedding']['mean']:.3f}")

    # ---------------------------------------------------------------- hat arithmetic
    pairs_samples = list(shapes.generate("hat_pairs", 2 * num, seed=seed + 303))
    pe = pipe.clip.encode_images([s.image for s in pairs_samples])
    bare, hat = pe[0::2], pe[1::2]
    half = num // 2
    hat_vector = (hat[:half] - bare[:half]).mean(0)                    # from pairs never decoded
    targets = F.normalize(bare[half:] + hat_vector, dim=-1)
    with_hat = pipe.decode(targets, steps=steps, guidance_scale=decoder_guidance, seed=seed, output="tensor")
    without = pipe.decode(bare[half:], steps=steps, guidance_scale=decoder_guidance, seed=seed, output="tensor")
    hat_pred = judge.predict(judge.embed(with_hat))["hat"]
    base_pred = judge.predict(judge.embed(without))["hat"]
    metrics["hat_arithmetic"] = {"judged_wearing_hat": float(hat_pred.mean()),
                                 "baseline_decoded_without_vector": float(base_pred.mean()),
                                 "num": int(len(targets))}
    strip = []
    for i in range(min(8, len(targets))):
        strip += [pairs_samples[2 * (half + i)].image, to_pil(with_hat[i:i + 1])[0]]
    _save_grid(strip, out / "hat_arithmetic.png", columns=8)
    say(f"hat arithmetic: {metrics['hat_arithmetic']['judged_wearing_hat']:.3f} judged wearing a hat "
        f"(without the vector {metrics['hat_arithmetic']['baseline_decoded_without_vector']:.3f})")

    # ---------------------------------------------------------------- variations & interpolation
    _save_grid(pipe.variations(real[0].image, n=8, steps=steps, guidance_scale=decoder_guidance, seed=seed),
               out / "variations.png")
    _save_grid(pipe.interpolate(image=(real[0].image, real[1].image), n=8, steps=steps, guidance_scale=decoder_guidance,
                                seed=seed), out / "interpolation.png")

    # ---------------------------------------------------------------- samplers
    samplers = {"ddim-%d" % steps: ("ddim", steps, num), **(samplers or {})}
    metrics["samplers"] = {}
    for name, (kind, n_steps, n_img) in samplers.items():
        t0 = time.time()
        x = pipe.decode(real_emb[:n_img], steps=n_steps, sampler=kind, guidance_scale=decoder_guidance, seed=seed,
                        output="tensor")
        dt = time.time() - t0
        e = judge.embed(x)
        sub_real = {a: v[:n_img] for a, v in real_pred.items()}
        metrics["samplers"][name] = {"seconds_per_image": dt / n_img, "num": n_img,
                                     "agreement": _summarise(judge.predict(e), sub_real)["mean"],
                                     "cosine": float((F.normalize(e, dim=-1) * real_emb[:n_img]).sum(-1).mean())}
        say(f"sampler {name}: {metrics['samplers'][name]}")

    # ---------------------------------------------------------------- guidance sweep
    sweep_rows = []
    n_sw = min(8, num)
    for s in sweep:
        x = pipe.decode(real_emb[:n_sw].repeat_interleave(4, 0), steps=steps, guidance_scale=s, seed=seed,
                        output="tensor")
        agree = _summarise(judge.predict(judge.embed(x)), {a: np.repeat(v[:n_sw], 4) for a, v in real_pred.items()})
        diversity = float(x.view(n_sw, 4, -1).std(1).mean())
        sweep_rows.append({"scale": s, "agreement": agree["mean"], "diversity": diversity})
    metrics["guidance_sweep"] = sweep_rows
    _plot_sweep(sweep_rows, out / "guidance_sweep.png")
    write_json(out / "metrics.json", metrics)
    return metrics


def _plot_sweep(rows, png: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    scales = [r["scale"] for r in rows]
    ax.plot(scales, [r["agreement"] for r in rows], "o-", label="attribute agreement")
    ax.set_xlabel("decoder guidance scale")
    ax.set_ylabel("agreement")
    ax2 = ax.twinx()
    ax2.plot(scales, [r["diversity"] for r in rows], "s--", color="tab:orange", label="diversity (pixel std)")
    ax2.set_ylabel("diversity")
    fig.legend(loc="lower center", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
