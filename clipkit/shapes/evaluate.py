"""Measures that need the shapes world's ground truth: per-attribute zero-shot accuracy and the hat vector.

    from clipkit.shapes import evaluate as shapes_eval
    report = shapes_eval.attribute_accuracy(model, images, metas)            # {"shape": 0.99, ...}
    train_clip(config, evaluators=[shapes_eval.clip_evaluator])              # the same, during training
    result = shapes_eval.hat_vector_experiment(model, "data/hat_pairs")      # "hat" is the nearest word?

Zero-shot uses the short prompts of clipkit.shapes.world.attribute_prompts ("a photo of
a circle"), whole (template "{}"), through clipkit.retrieval.zeroshot.ZeroShotClassifier: class
vectors are the normalised prompt embeddings, accuracy is top-1 against the true
attribute in each sample's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipkit.data.shards import read_samples
from clipkit.retrieval.arithmetic import nearest_words, vocabulary_embeddings
from clipkit.retrieval.zeroshot import ZeroShotClassifier
from clipkit.shapes import world as shapes

ATTRIBUTES = shapes.ATTRIBUTES


def attribute_accuracy(
    model, images, metas, attributes=ATTRIBUTES, confusion_dir: str | os.PathLike | None = None, prefix: str = ""
) -> dict[str, float]:
    """Top-1 zero-shot accuracy per attribute. `images`: anything ZeroShotClassifier takes (paths, PIL,
    or (N, D) image embeddings); `metas`: ShapeAttributes or metadata dicts. Attributes missing from the
    metadata are skipped. With `confusion_dir`, one confusion-matrix PNG per attribute
    (confusion_{prefix}{attribute}.png)."""

    if len(metas) and not hasattr(images, "shape"):
        images = model.encode_images(list(images)).numpy()  # embed once
    out = {}
    for attribute in attributes:
        if not len(metas) or any(m is None or (isinstance(m, dict) and attribute not in m) for m in metas):
            continue
        clf = ZeroShotClassifier(model, shapes.attribute_prompts(attribute), templates="none")
        png = Path(confusion_dir) / f"confusion_{prefix}{attribute}.png" if confusion_dir else None
        report = clf.evaluate(images, [shapes.attribute_label(m, attribute) for m in metas], confusion_png=png)
        out[attribute] = float(report["top1"])
    return out


def clip_evaluator(model, image_features, eval_set) -> dict[str, float]:
    """For train_clip(evaluators=...): zs_<attribute> accuracies (+ zs_mean, zs_min) on a shapes split."""
    zs = attribute_accuracy(model, np.asarray(image_features, dtype=np.float32), eval_set.metas)
    out = {f"zs_{a}": v for a, v in zs.items()}
    if zs:
        out["zs_mean"] = float(np.mean(list(zs.values())))
        out["zs_min"] = min(zs.values())
    return out


def _hat_pair_images(pairs) -> tuple[list, list]:
    """(bare images, hat images) from a hat_pairs shard folder / url pattern, samples, or a pair count."""
    if isinstance(pairs, int):
        pairs = list(shapes.generate("hat_pairs", 2 * pairs))
    if isinstance(pairs, (str, os.PathLike)):
        records = [
            (meta.get("pair_id"), bool(meta.get("hat")), image)
            for image, meta in read_samples(pairs, ("image", "json"))
            if meta
        ]
    else:
        records = [(s.pair_id, bool(s.attributes.hat), s.image) for s in pairs]
    by_pair: dict = {}
    for pair_id, hat, image in records:
        if pair_id is not None:
            by_pair.setdefault(pair_id, {})[hat] = image
    complete = [v for _, v in sorted(by_pair.items()) if True in v and False in v]
    if not complete:
        raise ValueError("no complete hat pairs (same pair_id, with and without hat) found")
    return [v[False] for v in complete], [v[True] for v in complete]


def hat_vector_experiment(
    model, pairs_dir_or_samples=100, vocabulary=None, word: str = "hat", template: str = "{}"
) -> dict:
    """For each pair, emb(with hat) - emb(without) -> rank of `word` among the vocabulary.

    `pairs_dir_or_samples`: a folder of hat_pairs shards, a shard url pattern, ShapeSamples of the
    hat_pairs split, or a number of pairs to generate. Returns top1_rate, mean_rank (1 = best),
    median_rank, mean_cosine (difference vs the word's embedding), consistency (mean cosine of each
    difference with the averaged one), hat_vector ((D,) float32 mean difference) and the words
    nearest to it.
    """
    bare, hat = _hat_pair_images(pairs_dir_or_samples)
    words, vocab = vocabulary_embeddings(model, vocabulary, template)
    if word not in words:
        words, vocab = vocabulary_embeddings(model, [*words, word], template)
    target = words.index(word)
    diffs = model.encode_images(hat).numpy() - model.encode_images(bare).numpy()  # (P, D)
    unit = diffs / np.maximum(np.linalg.norm(diffs, axis=1, keepdims=True), 1e-12)
    scores = unit @ vocab.T  # (P, V)
    ranks = 1 + (scores > scores[:, [target]]).sum(axis=1)
    mean_vec = diffs.mean(axis=0)
    mean_unit = mean_vec / max(float(np.linalg.norm(mean_vec)), 1e-12)
    return {
        "pairs": int(len(diffs)),
        "word": word,
        "vocabulary_size": len(words),
        "top1_rate": float(np.mean(ranks == 1)),
        "mean_rank": float(ranks.mean()),
        "median_rank": float(np.median(ranks)),
        "mean_cosine": float(scores[:, target].mean()),
        "consistency": float((unit @ mean_unit).mean()),
        "ranks": ranks.tolist(),
        "hat_vector": mean_vec.astype(np.float32),
        "nearest_to_hat_vector": nearest_words(model, mean_vec, 5, words, template),
    }
