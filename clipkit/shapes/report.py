"""report.html for the demo: every figure and headline number, each with a sentence of explanation."""

from __future__ import annotations

from pathlib import Path

from clipkit.io.report import Figure, Section, write_report
from clipkit.labs.genlab.report import genlab_sections
from clipkit.labs.spiral.lab import spiral_section


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def _data_section(r: dict) -> Section:
    counts = r["counts"]
    return Section(
        "1. The shapes world",
        f"Synthetic image–caption pairs written as img2dataset-style webdataset shards: "
        f"{counts['train']} train, {counts['val']} val, {counts['holdout']} holdout (shape×colour pairs never "
        f"seen in training) and {counts['hat_pairs'] // 2} hat pairs (identical images except for a hat). "
        f"Captions mention random subsets of the attributes, e.g. <i>{'</i>, <i>'.join(r['captions'][:4])}</i>.",
        [Figure("data/examples.png", "32 training images (shown 3× enlarged).")],
    )


def _clip_section(r: dict) -> Section:
    ev = r.get("eval", {})
    metrics = {
        "training steps": r["steps"],
        "training time (s)": round(r["train_seconds"], 1),
        "skipped corrupt samples": r.get("skipped", 0),
    }
    metrics.update(
        {
            k: round(v, 4)
            for k, v in ev.items()
            if k.startswith(("val/", "holdout/")) and ("zs_" in k or "r1" in k or "loss" in k)
        }
    )
    figures = [Figure("clip/curves.png", "Training loss and validation metrics against steps.")]
    return Section(
        "2. Training the CLIP",
        "A dual encoder (open_clip ViT image tower + text transformer) trained with the symmetric InfoNCE loss "
        "and a learnable temperature on the train shards. Zero-shot accuracy per attribute uses short prompts "
        "such as <code>a photo of a circle</code>, unlike the training captions.",
        figures,
        metrics=metrics,
    )


def _zeroshot_section(r: dict) -> Section:
    figs = [
        Figure(f"zeroshot/confusion_{split}_{a}.png", f"{split}: confusion matrix for {a} (rows = truth).")
        for split in ("val", "holdout")
        for a in ("shape", "color")
    ]
    return Section(
        "3. Zero-shot classification",
        "Each attribute is classified by comparing an image embedding with the embeddings of one prompt per class "
        "(open_clip's recipe: normalise, average over templates, renormalise; logits = 100·cos). The holdout split "
        "holds shape×colour combinations the model never saw together: it measures compositional generalisation.",
        figs,
        table=r["table"],
    )


def _retrieval_section(r: dict) -> Section:
    figs = [
        Figure(f"retrieval/{s['figure']}", f"“{s['query']}”: the 8 nearest val images (left = best).")
        for s in r["searches"]
    ]
    return Section(
        "4. Text → image search with FAISS",
        f"{r['count']} val images embedded in clip-retrieval's layout (<code>img_emb/</code>, "
        f"<code>text_emb/</code>, <code>metadata/</code>) and indexed ({r['kind']}); each row below is one "
        f"text query and its nearest images.",
        figs,
    )


def _hat_section(r: dict) -> Section:
    nearest = ", ".join(f"{w} ({s:.2f})" for w, s in r.get("nearest_to_hat_vector", [])[:5])
    return Section(
        "5. Embedding arithmetic: the hat vector",
        f"For each hat pair, emb(with hat) − emb(without hat) is compared with the embeddings of "
        f"{r['vocabulary_size']} common English words. 'hat' is the nearest word for {_pct(r['top1_rate'])} of "
        f"{r['pairs']} pairs; the averaged difference vector's nearest words are: {nearest}.",
        metrics={
            "pairs": r["pairs"],
            "'hat' top-1 rate": r["top1_rate"],
            "mean rank of 'hat'": r["mean_rank"],
            "mean cosine(difference, 'hat')": r["mean_cosine"],
            "consistency (cosine with the mean difference)": r["consistency"],
        },
    )


def _unclip_section(r: dict) -> Section:
    m = r["metrics"]
    inv, t2i, hat = m["inversion"], m["text_to_image"], m["hat_arithmetic"]
    attrs = ("shape", "color", "size", "position", "hat")
    rows = [("inversion: decoded vs source image", inv, inv["clip"]["agreement"])] + [
        (label, t2i["methods"][key], t2i["methods"][key]["clip_agreement"])
        for key, label in (
            ("with_prior", "text -> prior -> decoder"),
            ("direct_text_embedding", "text embedding decoded directly"),
            ("with_prior_upsampled", "text -> prior -> decoder -> upsampler"),
            ("with_prior_bicubic_64", "text -> prior -> decoder, bicubic x2"),
        )
        if key in t2i["methods"]
    ]
    table = [
        {
            "measure": name,
            **{a: round(v["agreement"][a], 3) for a in attrs},
            "mean": round(v["agreement"]["mean"], 3),
            "sharpness": round(v["sharpness"]["sharpness"], 3),
            "Frechet / floor": round(v["frechet"]["ratio"], 2),
            "CLIP-judged mean": round(clip["mean"], 3),
        }
        for name, v, clip in rows
    ]
    samplers = {
        f"{name}: {field}": value
        for name, v in m["samplers"].items()
        for field, value in v.items()
        if field in ("seconds_per_image", "agreement", "sharpness", "cosine")
    }
    figs = [
        Figure(
            "unclip/samples/inversion.png",
            "Pairs: a held-out image, then the decoder's reconstruction from its CLIP image embedding.",
        ),
        Figure("unclip/samples/text_to_image_prior.png", "Text -> prior -> decoder, one image per caption."),
        Figure(
            "unclip/samples/text_to_image_direct.png", "The same captions' text embeddings decoded directly (no prior)."
        ),
        Figure("unclip/samples/hat_arithmetic.png", "Pairs: a bare shape, then emb(shape) + mean hat vector decoded."),
        Figure(
            "unclip/samples/blue_circle_plus_hat_vector.png",
            'img:"blue_circle.png" + the hat vector of section 5, rendered 7 times (first: source).',
        ),
        Figure("unclip/samples/variations.png", "Variations: one image's embedding decoded from 8 noises."),
        Figure("unclip/samples/interpolation.png", "Slerp between two images' embeddings, same starting noise."),
        Figure(
            "unclip/samples/guidance_sweep.png",
            "Decoder guidance scale vs attribute agreement, sharpness and diversity.",
        ),
    ]
    return Section(
        "6. unCLIP: from embeddings back to pixels",
        f"A diffusion prior maps text embeddings to image embeddings and a diffusion decoder (UNet, x0-prediction, "
        f"EMA, classifier-free guidance) maps image embeddings to pixels. The figures come from an independent judge, "
        f"a small CNN trained on the world's true attributes (not on CLIP): agreement with the source image's or the "
        f"caption's attributes, sharpness against real renders (1.0 = as sharp), and the Frechet distance in the "
        f"judge's features as a multiple of the real-vs-real floor; the demo CLIP's own zero-shot verdict stays "
        f"beside. {m['judge']['summary']}. Training: decoder {r['decoder'].get('train_seconds', '?')} s "
        f"then prior {r['prior'].get('train_seconds', '?')} s in one process, beside the upsampler's "
        f"{r['upsampler'].get('train_seconds', '?')} s in another (one thread each). "
        f"{hat['num']} bare shapes + hat vector were judged wearing a hat "
        f"{_pct(hat['judged_wearing_hat'])} of the time (without the vector: "
        f"{_pct(hat['baseline_decoded_without_vector'])}).",
        figs,
        metrics=samplers,
        table=table,
    )


def _spiral_section(r: dict) -> Section:

    section = spiral_section(r["metrics"], prefix="spiral/", title="7. The spiral lab: diffusion you can see")
    section.text += " <a href='spiral/index.html'>Spiral lab page</a>."
    return section


def _genlab_sections(r: dict) -> list[Section]:

    sections = genlab_sections(r["metrics"], prefix="genlab/", title="8. Autoregression vs diffusion, on images")
    sections[0].text += " <a href='genlab/index.html'>Generation lab page</a>."
    return sections


def write_demo_report(out: Path, summary: dict) -> Path:
    stages = summary["stages"]
    builders = [
        ("data", _data_section),
        ("clip", _clip_section),
        ("zeroshot", _zeroshot_section),
        ("retrieval", _retrieval_section),
        ("hat_vector", _hat_section),
        ("unclip", _unclip_section),
        ("spiral", _spiral_section),
    ]
    sections = [build(stages[name]) for name, build in builders if name in stages]
    if "genlab" in stages:
        sections += _genlab_sections(stages["genlab"])
    headline = "<br>".join(
        f"<b>{name}</b>: {r.get('summary', '')} ({r.get('seconds', '?')} s)" for name, r in stages.items()
    )
    mode = "quick mode (tiny settings)" if summary.get("quick") else "full settings"
    return write_report(
        out / "report.html",
        "clipkit demo: the shapes world end to end",
        sections,
        summary=f"Ran in {summary['seconds']:.0f} s, {mode}.<br>{headline}",
    )
