"""Evaluation of a CLIP model on a held-out split of shards.

    eval_set = load_eval_set("data/val/{00000..00001}.tar", model, max_samples=2000)
    metrics = evaluate_clip(model, eval_set)
    # {"loss": 0.41, "i2t_r1": ..., "i2t_r5": ..., "i2t_r10": ..., "t2i_r1": ..., ...,
    #  "zs_shape": 0.99, "zs_color": 1.0, ..., "zs_mean": 0.995}

- loss: the contrastive loss on consecutive batches of `batch_size` (what training sees).
- retrieval: image->text and text->image recall@1/5/10 over the whole set, where
  the correct answer is the sample's own caption / image (shapes captions repeat,
  so R@1 has a ceiling below 1: identical captions tie).
- zero-shot: per shapes attribute, short prompts from
  clipkit.data.shapes.attribute_prompts ("a photo of a circle"), accuracy of the
  argmax against the attribute in each sample's JSON metadata. Only computed when
  the samples carry the attributes (the shapes world does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipkit.losses import clip_loss


@dataclass
class EvalSet:
    """A split held in memory: preprocessed images, captions and per-sample metadata."""

    images: torch.Tensor          # (N, 3, H, W) preprocessed
    captions: list[str]
    metas: list[dict | None]

    def __len__(self) -> int:
        return len(self.captions)


def load_eval_set(urls, model, max_samples: int | None = 2000, counter=None) -> EvalSet:
    """Read up to `max_samples` samples of shards `urls` (every process reads all; no rank splitting)."""
    from clipkit.data.shards import shard_pipeline

    pipeline, _ = shard_pipeline(urls, image_transform=model.preprocess, batch_size=256,
                                 fields=("image", "text", "json"), split_by_node=False, counter=counter)
    images, captions, metas = [], [], []
    for batch_images, batch_texts, batch_metas in pipeline:
        images.append(batch_images)
        captions.extend(batch_texts)
        metas.extend(batch_metas)
        if max_samples is not None and len(captions) >= max_samples:
            break
    if not captions:
        raise ValueError(f"no readable samples in evaluation shards {urls!r}")
    n = len(captions) if max_samples is None else min(max_samples, len(captions))
    return EvalSet(torch.cat(images)[:n], captions[:n], metas[:n])


def recall_at_k(similarity: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Rows are queries, the correct column of row i is i; fraction with the correct one in the top k."""
    correct = similarity.diagonal().unsqueeze(1)
    rank = (similarity > correct).sum(1)           # 0 = first place (ties count in our favour, as argsort would half the time)
    return {k: float((rank < k).float().mean()) for k in ks}


def zero_shot_accuracy(model, image_features: torch.Tensor, metas: list[dict | None],
                       attributes=None) -> dict[str, float]:
    """Accuracy per shapes attribute with short prompts; attributes missing from the metadata are skipped."""
    from clipkit.data.shapes import ATTRIBUTES, attribute_label, attribute_prompts

    out = {}
    for attribute in attributes or ATTRIBUTES:
        if not metas or any(m is None or attribute not in m for m in metas):
            continue
        class_features = model.encode_texts(attribute_prompts(attribute))          # (C, D)
        predicted = (image_features @ class_features.T).argmax(1)
        labels = torch.tensor([attribute_label(m, attribute) for m in metas])
        out[attribute] = float((predicted == labels).float().mean())
    return out


@torch.no_grad()
def evaluate_clip(model, eval_set: EvalSet, batch_size: int = 256, attributes=None) -> dict[str, float]:
    """Contrastive loss, retrieval R@1/5/10 both ways and zero-shot accuracy per attribute (see module doc)."""
    image_features = model.encode_images(eval_set.images, batch_size=batch_size)   # (N, D) unit norm
    text_features = model.encode_texts(eval_set.captions, batch_size=batch_size)    # (N, D)
    scale = model.model.logit_scale.exp().float().cpu()
    losses, weights = [], []
    for start in range(0, len(eval_set), batch_size):
        img, txt = image_features[start:start + batch_size], text_features[start:start + batch_size]
        if len(img) > 1:
            losses.append(float(clip_loss(img, txt, scale, gather=False)) * len(img))
            weights.append(len(img))
    metrics = {"loss": sum(losses) / max(1, sum(weights))}
    similarity = image_features @ text_features.T                                   # (N, N)
    for k, v in recall_at_k(similarity).items():
        metrics[f"i2t_r{k}"] = v
    for k, v in recall_at_k(similarity.T).items():
        metrics[f"t2i_r{k}"] = v
    zs = zero_shot_accuracy(model, image_features, eval_set.metas, attributes)
    for attribute, acc in zs.items():
        metrics[f"zs_{attribute}"] = acc
    if zs:
        metrics["zs_mean"] = sum(zs.values()) / len(zs)
        metrics["zs_min"] = min(zs.values())
    return metrics
