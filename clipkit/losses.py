"""Contrastive losses for dual encoders: CLIP's softmax loss and SigLIP's sigmoid loss.

Both work on one process or across many (torch.distributed). Across
processes each rank gathers the other ranks' features WITH gradient
(`torch.distributed.nn.all_gather`, whose backward sends each rank the
gradient for its own features) and computes the *local* loss: its own rows
against all columns, labels offset by its rank. The mean of the local losses
over ranks is exactly the loss of one process on the concatenated batch, and
with DDP's gradient averaging the gradients are exactly equal too (open_clip
issue 894). Gathering with gradient but computing the full N x N loss on
every rank would instead multiply the gradients by the world size (issue 616).

`accelerator.gather` carries no gradient; it is for metrics, never for the loss.
Every rank must hold the same number of samples (use drop-last batching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, D) on each of W ranks -> (W*n, D) in rank order; backward routes gradients to their owners."""
    _, world = _world()
    if world == 1:
        return x
    import warnings

    import torch.distributed.nn

    # torch 2.15 marks this autograd all-gather deprecated in favour of a private
    # module (_functional_collectives); open_clip uses it too, and the 2-process
    # test pins its gradients. Silence the per-step warning, keep the behaviour.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(torch.distributed.nn.all_gather(x.contiguous()), dim=0)


def _check(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features "
            f"{tuple(text_features.shape)} must both be (N, D) with the same N and D"
        )


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, gather: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local logits and targets: (n, W*n) image->text, (n, W*n) text->image, (n,) labels.

    Features are expected L2-normalised; `logit_scale` is the multiplier
    (already exp()'d, as open_clip's model outputs it).
    """
    _check(image_features, text_features)
    rank, world = _world() if gather else (0, 1)
    n = image_features.shape[0]
    if world > 1:
        all_image, all_text = gather_with_grad(image_features), gather_with_grad(text_features)
    else:
        all_image, all_text = image_features, text_features
    logits_per_image = logit_scale * image_features @ all_text.T  # (n, W*n)
    logits_per_text = logit_scale * text_features @ all_image.T  # (n, W*n)
    labels = torch.arange(n, device=image_features.device) + n * rank
    return logits_per_image, logits_per_text, labels


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, gather: bool = True
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy: pairs on the diagonal pulled together, all others pushed apart.

    Equal to open_clip's `ClipLoss()(image_features, text_features, logit_scale)`
    on one process. With a process group (and `gather`), this rank's local
    loss over the global batch: its mean over ranks is the global loss.
    """
    logits_per_image, logits_per_text, labels = clip_logits(image_features, text_features, logit_scale, gather)
    return 0.5 * (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels))


def siglip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias, gather: bool = True
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), normalised per image as open_clip's SigLipLoss.

    Every (image, text) pair is an independent binary problem: +1 on the
    diagonal, -1 elsewhere. Across ranks: this rank's images against all
    texts (gathered with gradient); the mean over ranks equals the global loss.
    """
    _check(image_features, text_features)
    rank, world = _world() if gather else (0, 1)
    n = image_features.shape[0]
    all_text = gather_with_grad(text_features) if world > 1 else text_features
    logits = (logit_scale * image_features @ all_text.T + logit_bias).float()  # (n, W*n)
    targets = -torch.ones_like(logits)
    targets[torch.arange(n, device=logits.device), torch.arange(n, device=logits.device) + n * rank] = 1.0
    return -F.logsigmoid(targets * logits).sum() / n
