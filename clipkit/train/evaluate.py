"""Evaluation of a CLIP model on a held-out split of shards.

    eval_set = load_eval_set("data/val/{00000..00001}.tar", model, max_samples=2000)
    metrics = evaluate_clip(model, eval_set)
    # {"loss": 0.41, "i2t_r1": ..., "i2t_r5": ..., "i2t_r10": ..., "t2i_r1": ..., ...}
    metrics = evaluate_clip(model, eval_set, evaluators=[shapes_eval.clip_evaluator])   # + "zs_shape", ...

- loss: the contrastive loss on consecutive batches of `batch_size` (what training sees).
- retrieval: image->text and text->image recall@1/5/10 over the whole set, where
  the correct answer is the sample's own caption / image (shapes captions repeat,
  so R@1 has a ceiling below 1: identical captions tie).
- evaluators: callables (model, image_features, eval_set) -> {metric: value}
  for whatever the data's metadata allows (the shapes experiment's per-attribute
  zero-shot accuracy is one: clipkit.shapes.evaluate.clip_evaluator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipkit.data.shards import read_samples
from clipkit.losses import clip_loss


@dataclass
class EvalSet:
    """A split held in memory: preprocessed images, captions and per-sample metadata."""

    images: torch.Tensor  # (N, 3, H, W) preprocessed
    captions: list[str]
    metas: list[dict | None]

    def __len__(self) -> int:
        return len(self.captions)


def load_eval_set(urls, model, max_samples: int | None = 2000, counter=None) -> EvalSet:
    """Read up to `max_samples` samples of shards `urls` (every process reads all; no rank splitting)."""

    samples = read_samples(urls, ("image", "text", "json"), max_samples, counter=counter)
    if not samples:
        raise ValueError(f"no readable samples in evaluation shards {urls!r}")
    images, captions, metas = zip(*samples)
    return EvalSet(torch.stack([model.preprocess(im) for im in images]), list(captions), list(metas))


def recall_at_k(similarity: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Rows are queries, the correct column of row i is i; fraction with the correct one in the top k."""
    correct = similarity.diagonal().unsqueeze(1)
    rank = (similarity > correct).sum(1)  # 0 = first place (ties count in our favour, as argsort would half the time)
    return {k: float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def evaluate_clip(model, eval_set: EvalSet, batch_size: int = 256, evaluators=()) -> dict[str, float]:
    """Contrastive loss, retrieval R@1/5/10 both ways, and each evaluator's metrics (see module doc)."""
    image_features = model.encode_images(eval_set.images, batch_size=batch_size)  # (N, D) unit norm
    text_features = model.encode_texts(eval_set.captions, batch_size=batch_size)  # (N, D)
    scale = model.model.logit_scale.exp().float().cpu()
    losses, weights = [], []
    for start in range(0, len(eval_set), batch_size):
        img, txt = image_features[start : start + batch_size], text_features[start : start + batch_size]
        if len(img) > 1:
            losses.append(float(clip_loss(img, txt, scale, gather=False)) * len(img))
            weights.append(len(img))
    metrics = {"loss": sum(losses) / max(1, sum(weights))}
    similarity = image_features @ text_features.T  # (N, N)
    for k, v in recall_at_k(similarity).items():
        metrics[f"i2t_r{k}"] = v
    for k, v in recall_at_k(similarity.T).items():
        metrics[f"t2i_r{k}"] = v
    for evaluator in evaluators:
        metrics.update(evaluator(model, image_features, eval_set))
    return metrics
