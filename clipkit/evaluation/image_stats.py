"""Model-free measures of a set of images against real ones: Frechet, noise / sharpness, nearest source.

    from clipkit.evaluation.image_stats import frechet_distance, frechet_ratio, noise_sharpness, nearest_source
    frechet_ratio(gen_features, real_features)         # {"frechet", "floor", "ratio", "num"}
    noise_sharpness(generated, real)                   # {"noise": 1.0 = as noisy as real, "sharpness": 1.0 = as sharp}
    nearest_source(generated, real, source_index)      # {"top1", "chance", "num_candidates", "num"}

Images are float (N, 3, H, W) tensors in [-1, 1] (clipkit.evaluation.judge.as_tensor
makes them from PIL lists); real images of another size are resized to the generated size.

Noise and sharpness, built so that speckle cannot buy either. The colour structure
tensor (Di Zenzo: per-pixel outer product of the RGB gradients summed over channels,
averaged in a Gaussian window of sigma 1 px) has eigenvalues l1 >= l2. Along an edge
the gradients in the window share one direction: l1 is large, l2 ~ 0. Speckle,
confetti and Gaussian noise point every way: they raise l2 about as much as l1.
So `noise` = mean l2 of the images / mean l2 of real images (incoherent gradient
energy; 1.0 = as in real images, speckle > 1, blur < 1) and `sharpness` =
min(1, coherent energy ratio) x min(1, coherence ratio), where coherent energy is
mean(l1 - l2) and coherence = sum(l1 - l2) / sum(l1 + l2): blur lowers the first,
speckle the second (its extra l1 is capped, its lost coherence is not). `hf_ratio`
(Laplacian energy ratio, what a naive high-frequency measure reports) is given
beside them to show what speckle does to a measure that is fooled.

Frechet: as in FID, between Gaussians fitted to two feature sets; its floor is the
distance between two disjoint halves of the real set, at the same set size (the
estimate is biased by the size: compare ratios, never raw distances of other sizes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_SIGMA = 1.0


def resize_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, side, side): area-average by an integer factor, else antialiased bilinear."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    if x.shape[-1] % side == 0 and x.shape[-1] == x.shape[-2]:
        return F.avg_pool2d(x, x.shape[-1] // side)
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


# ----------------------------------------------------------------------------- Frechet


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D), in float64.

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), by symmetric eigendecompositions."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples on each side; got {len(a)} and {len(b)}")
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(sa)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + sa.trace() + sb.trace() - 2 * cross)


def frechet_ratio(features: torch.Tensor, real_features: torch.Tensor, seed: int = 0) -> dict:
    """Frechet distance of `features` to half of the real set, as a multiple of the real-vs-real floor.

    The real features are shuffled (seeded) and cut into two disjoint halves A and B; n = min(len(features),
    len(real) // 2) rows of each side are used, so the distance and its floor come from sets of one size:
    frechet = FD(features[:n], A[:n]), floor = FD(B[:n], A[:n]), ratio = frechet / floor."""
    n = min(len(features), len(real_features) // 2)
    if n < 2:
        raise ValueError(
            f"{len(features)} images and {len(real_features)} real images; the Frechet floor needs at "
            f"least 2 images and 4 real ones (two disjoint halves)"
        )
    order = torch.randperm(len(real_features), generator=torch.Generator().manual_seed(seed))
    ref, other = real_features[order[:n]], real_features[order[n : 2 * n]]
    pick = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed + 1))[:n]
    d, floor = frechet_distance(features[pick], ref), frechet_distance(other, ref)
    return {"frechet": d, "floor": floor, "ratio": d / floor if floor > 0 else float("inf"), "num": int(n)}


# ----------------------------------------------------------------------------- noise and sharpness


def _gaussian(sigma: float) -> torch.Tensor:
    r = int(np.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def structure_tensor(x: torch.Tensor, sigma: float = _SIGMA) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (l1, l2), each (N, H, W), of the colour structure tensor of x (N, C, H, W) in [-1, 1]."""
    rgb = (x.float() + 1) / 2
    n, c, h, w = rgb.shape
    flat = F.pad(rgb.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    kx = (
        torch.tensor([[-1.0, 0.0, 1.0]]).mul(0.5)[None, None]
        * torch.tensor([1.0, 2.0, 1.0]).div(4)[None, None, :, None]
    )
    gx = F.conv2d(flat, kx).reshape(n, c, h, w)  # Sobel, unit gain on a ramp
    gy = F.conv2d(flat, kx.transpose(2, 3)).reshape(n, c, h, w)
    j = torch.stack([(gx * gx).sum(1), (gy * gy).sum(1), (gx * gy).sum(1)], 1)  # (N, 3, H, W): Jxx, Jyy, Jxy
    k = _gaussian(sigma)
    r = len(k) // 2
    j = F.conv2d(F.pad(j, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    j = F.conv2d(F.pad(j, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    mean, diff = (j[:, 0] + j[:, 1]) / 2, (j[:, 0] - j[:, 1]) / 2
    root = (diff * diff + j[:, 2] * j[:, 2]).sqrt()
    return mean + root, (mean - root).clamp(min=0)


def laplacian_energy(x: torch.Tensor) -> float:
    """Mean squared 4-neighbour Laplacian of RGB in [0, 1] (the naive high-frequency measure)."""
    rgb = (x.float() + 1) / 2
    lap = 4 * rgb[..., 1:-1, 1:-1] - rgb[..., :-2, 1:-1] - rgb[..., 2:, 1:-1] - rgb[..., 1:-1, :-2] - rgb[..., 1:-1, 2:]
    return float(lap.pow(2).mean())


def edge_statistics(x: torch.Tensor) -> dict:
    """{"incoherent", "coherent", "coherence", "laplacian"} of a set of images (see the module docstring)."""
    l1, l2 = structure_tensor(x)
    total = float((l1 + l2).sum())
    return {
        "incoherent": float(l2.mean()),
        "coherent": float((l1 - l2).mean()),
        "coherence": float((l1 - l2).sum()) / total if total > 0 else 0.0,
        "laplacian": laplacian_energy(x),
    }


def noise_sharpness(images: torch.Tensor, real: torch.Tensor) -> dict:
    """Noise and sharpness of `images` as ratios to `real` images (resized to the images' size first).

    noise: incoherent gradient energy / real's (1.0 = real; speckle raises it, blur lowers it); sharpness:
    min(1, coherent energy / real's) x min(1, coherence / real's) (1.0 = real; blur and speckle both lower it);
    hf_ratio: Laplacian energy / real's (fooled by speckle, shown for contrast)."""
    real = resize_to(real, images.shape[-1])
    s, r = edge_statistics(images), edge_statistics(real)
    ratio = {k: s[k] / r[k] if r[k] > 0 else float("inf") for k in s}
    return {
        "noise": ratio["incoherent"],
        "sharpness": min(1.0, ratio["coherent"]) * min(1.0, ratio["coherence"]),
        "hf_ratio": ratio["laplacian"],
        "coherent_ratio": ratio["coherent"],
        "coherence_ratio": ratio["coherence"],
        "images": s,
        "real": r,
        "image_size": int(images.shape[-1]),
    }


# ----------------------------------------------------------------------------- pixel nearest source


def nearest_source(
    images: torch.Tensor, real: torch.Tensor, source_index, num_candidates: int = 100, seed: int = 0
) -> dict:
    """Is each image's nearest real image (pixel L2) its own source, among `num_candidates` real images?

    source_index[i] is the row of `real` that image i was made from (its inversion target); the candidates are
    that source plus num_candidates - 1 other rows drawn without replacement (seeded). top1 = fraction of
    images whose nearest candidate is the source; chance = 1 / num_candidates (fewer when `real` is smaller)."""
    source_index = torch.as_tensor(np.asarray(source_index), dtype=torch.long)
    if len(source_index) != len(images):
        raise ValueError(f"{len(images)} images but {len(source_index)} source indices; give one source per image")
    m = len(real)
    if m < 2 or bool((source_index < 0).any()) or bool((source_index >= m).any()):
        raise ValueError(f"source indices must point into the {m} real images (and there must be >= 2 of them)")
    k = min(int(num_candidates), m)
    real = resize_to(real.float(), images.shape[-1]).flatten(1)
    flat = images.float().flatten(1)
    g = torch.Generator().manual_seed(seed)
    hits = 0
    for i, src in enumerate(source_index.tolist()):
        others = torch.randperm(m - 1, generator=g)[: k - 1]
        others = others + (others >= src).long()  # skip the source itself
        candidates = torch.cat([torch.tensor([src]), others])
        d = (real[candidates] - flat[i]).pow(2).sum(1)
        hits += int(int(d.argmin()) == 0)
    return {"top1": hits / len(images), "chance": 1.0 / k, "num_candidates": k, "num": len(images)}
