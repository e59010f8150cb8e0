"""An independent judge of shapes-world images: a small CNN trained on the world's TRUE attributes, not on CLIP.

    from clipkit.shapes.judge import ShapesJudge
    judge = ShapesJudge.load()                 # the shipped weights (package data): no training needed
    print(judge.accuracy_line())               # its own accuracy on fresh real val / holdout images
    judge.predict(images)                      # {attribute: (N,) class indices}; PIL list or (N,3,H,W) in [-1, 1]
    judge.agreement(images, targets)           # per attribute + mean; targets: ShapeAttributes, dicts or labels
    judge.sharpness(images)                    # palette fraction x edge energy, as a ratio to real images
    judge.frechet(images)                      # Frechet distance in the judge's features, with the real-vs-real floor
    judge.diversity(images)                    # distinct shapes / colours / positions seen, mean pixel distance

Why a judge of its own: scoring a decoder's pixels with the CLIP whose embedding
conditioned the decoder grades the generator with its own teacher. This network
never saw a CLIP; it learnt shape, colour, size, position, hat and background from
renders of every combination of the world (it may: it is a ruler, not the model
under test), at 32 and 64 px, with mild blur, noise, colour and one-pixel shifts so
that it still reads slightly imperfect generations. It reads any square size:
images are area-averaged (integer factors, as `shapes.render` itself does) or
antialias-resized to 32 px first. Retrain with `train_judge()` (seeded, ~6 CPU-minutes
on one thread); the shipped folder holds config.json, model.safetensors and
training.json (what it measured on real images when it was trained).

Frechet space: extra heads name the corruption of an image (CORRUPTIONS: blur, noise,
washed-out colours). A network trained only to be robust to blur forgets it (its
features put a sigma-1 blurred set at 1.2x the real-vs-real floor with 128 images);
naming it keeps it (7.5x). The floor falls with the set size, so compare ratios at the
same size, and prefer 128+ images: at 64, sigma-1 blur is only ~3x the floor.

Sharpness: real renders are flat colours from a 12-colour palette with one-pixel
anti-aliased edges. `palette` is the fraction of pixels within 0.1 (RGB in [0, 1],
Euclidean) of a palette colour: muddy backgrounds and smeared edges leave it.
`edge_energy` is the mean squared neighbour difference: blur lowers it. The headline
`sharpness` = (palette / real palette) x min(1, edge energy / real edge energy),
against real images of the same resolution (1.0 = as sharp as real renders; noise
cannot buy edge energy above the real images'). Blind spot: nearest-neighbour
upscaling keeps flat colours and edge energy (0.98 at 64 px) though it is blocky.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipkit.shapes import world as shapes
from clipkit.config import SAVED_METADATA, config_from_dict
from clipkit.io import atomic_directory, write_json

WEIGHTS_DIR = Path(__file__).with_name("judge_weights")
KIND = "shapes-judge"
ATTRIBUTES = ("shape", "color", "size", "position", "hat", "background")
# Corruptions the judge also learns to name (levels; 0 = clean): Gaussian blur sigma in 32-px pixels, noise std
# in [-1, 1] units, and washing out towards grey. They shape its feature space, so the Frechet distance sees them.
CORRUPTIONS = {"blur": (0.0, 0.5, 0.8, 1.2), "noise": (0.0, 0.03, 0.08), "wash": (0.0, 0.15, 0.3)}
CLASSES = {**{a: tuple(shapes.attribute_classes(a)) for a in shapes.ATTRIBUTES}, "background": tuple(shapes.BACKGROUNDS)}
PALETTE = torch.tensor([*shapes.COLORS.values(), *shapes.BACKGROUNDS.values(), shapes.HAT_COLOR]) / 255.0  # (12, 3)
PALETTE_TOLERANCE = 0.1
REAL_SEED = 9_001          # seeds of the real reference images, far from the demo's and the tests' streams


@dataclass(frozen=True)
class JudgeConfig:
    widths: tuple = (32, 64, 64, 32)   # conv widths; all but the first halve the resolution: 32 -> 4 px
    feature_dim: int = 64              # penultimate features (the Frechet space)
    image_size: int = 32               # every input is brought to this size first

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


class JudgeNet(nn.Module):
    """conv stack (32 -> 4 px) -> flatten -> feature_dim -> one linear head per attribute."""

    def __init__(self, config: JudgeConfig = JudgeConfig()):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for i, w in enumerate(config.widths):
            layers += [nn.Conv2d(c_in, w, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
            c_in = w
        self.convs = nn.Sequential(*layers)
        side = config.image_size // 2 ** (len(config.widths) - 1)
        self.features = nn.Linear(c_in * side * side, config.feature_dim)
        classes = {**{a: len(CLASSES[a]) for a in ATTRIBUTES}, **{c: len(v) for c, v in CORRUPTIONS.items()}}
        self.heads = nn.ModuleDict({a: nn.Linear(config.feature_dim, n) for a, n in classes.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        f = self.features(self.convs(x).flatten(1))                 # (N, feature_dim), before the ReLU
        h = F.relu(f)
        return f, {a: head(h) for a, head in self.heads.items()}


# ----------------------------------------------------------------------------- inputs

def as_tensor(images) -> torch.Tensor:
    """PIL list or (N, 3, H, W) tensor in [-1, 1] -> float (N, 3, H, W) in [-1, 1], square."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image tensor has shape {tuple(x.shape)}; expected (N, 3, H, W) in [-1, 1]")
    else:
        from clipkit.images import to_rgb

        images = list(images)
        if not images or not all(hasattr(im, "convert") for im in images):
            raise TypeError("images must be a non-empty list of PIL images or an (N, 3, H, W) tensor in [-1, 1]")
        sizes = {im.size for im in images}
        if len(sizes) != 1:
            raise ValueError(f"images have several sizes {sorted(sizes)}; resize them to one size first")
        arr = np.stack([np.asarray(to_rgb(im), dtype=np.float32) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    if x.shape[2] != x.shape[3] or x.shape[2] < 16:
        raise ValueError(f"images are {x.shape[3]}x{x.shape[2]}; the judge reads square images of 16 px or more")
    return x.clamp(-1, 1)


def to_judge_size(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Area-average by an integer factor (what shapes.render does), else antialiased bilinear resize."""
    side = x.shape[-1]
    if side == size:
        return x
    if side % size == 0:
        return F.avg_pool2d(x, side // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def labels(targets, attributes=None) -> dict:
    """{attribute: (N,) int array} from ShapeAttributes / attribute dicts, or a {attribute: labels} dict."""
    names = set(targets if isinstance(targets, dict) else ()) | set(attributes or ())
    if names - set(ATTRIBUTES):
        raise ValueError(f"unknown attributes {sorted(names - set(ATTRIBUTES))}; expected some of {ATTRIBUTES}")
    if isinstance(targets, dict):
        return {a: np.asarray(v, dtype=np.int64) for a, v in targets.items() if attributes is None or a in attributes}
    rows = [t if isinstance(t, dict) else asdict(t) for t in targets]
    return {a: np.array([int(bool(r[a])) if a == "hat" else CLASSES[a].index(r[a]) for r in rows], dtype=np.int64)
            for a in attributes or ATTRIBUTES}


@functools.lru_cache(maxsize=16)
def real_images(split: str, num: int, size: int, seed: int = REAL_SEED) -> tuple[torch.Tensor, tuple]:
    """`num` real renders of `split` at `size` px as (N, 3, S, S) in [-1, 1], with their attributes (cached)."""
    samples = list(shapes.generate(split, num, seed=seed, image_size=size))
    return as_tensor([s.image for s in samples]), tuple(s.attributes for s in samples)


# ----------------------------------------------------------------------------- measures without the network

def palette_fraction(x: torch.Tensor) -> float:
    """Fraction of pixels within PALETTE_TOLERANCE of one of the world's 12 colours."""
    rgb = (x + 1) / 2                                                         # (N, 3, H, W) in [0, 1]
    d = torch.cdist(rgb.permute(0, 2, 3, 1).reshape(-1, 3), PALETTE.to(rgb))  # (N*H*W, 12)
    return float((d.min(1).values <= PALETTE_TOLERANCE).float().mean())


def edge_energy(x: torch.Tensor) -> float:
    """Mean squared difference of horizontal plus vertical neighbours, RGB in [0, 1]."""
    rgb = (x + 1) / 2
    return float((rgb[..., :, 1:] - rgb[..., :, :-1]).pow(2).mean() + (rgb[..., 1:, :] - rgb[..., :-1, :]).pow(2).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D), in float64.

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), by symmetric eigendecompositions."""
    a, b = a.double(), b.double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples on each side; got {len(a)} and {len(b)}")
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(sa)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + sa.trace() + sb.trace() - 2 * cross)


def _summary(pred: dict, truth: dict) -> dict:
    per = {a: float((pred[a] == truth[a]).mean()) for a in truth}
    return {"mean": float(np.mean(list(per.values()))), **per}


# ----------------------------------------------------------------------------- the judge

class ShapesJudge:
    """The trained network and every measure built on it (see the module docstring)."""

    def __init__(self, net: JudgeNet, training: dict | None = None):
        self.net = net.eval()
        self.training = training or {}
        self._accuracy = None

    @classmethod
    def load(cls, directory=None) -> "ShapesJudge":
        """The shipped judge (clipkit/shapes/judge_weights), or one saved by `train_judge(out_dir=...)`."""
        from safetensors.torch import load_file

        directory = Path(directory) if directory is not None else WEIGHTS_DIR
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{str(directory)!r} is not a saved shapes judge: {name} is missing; "
                                        f"train one with clipkit.shapes.judge.train_judge(out_dir=...)")
        data = json.loads((directory / "config.json").read_text())
        if data.get("kind") != KIND:
            raise ValueError(f"{str(directory)!r} holds a {data.get('kind')!r}, expected a {KIND!r}")
        net = JudgeNet(config_from_dict(JudgeConfig, data, "judge", ignore=SAVED_METADATA))
        net.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        training = directory / "training.json"
        return cls(net, json.loads(training.read_text()) if training.is_file() else None)

    def save(self, directory) -> Path:
        from safetensors.torch import save_file

        from clipkit import __version__

        with atomic_directory(directory) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": KIND})
            write_json(tmp / "config.json", {"kind": KIND, "clipkit_version": __version__, **asdict(self.net.config)})
            write_json(tmp / "training.json", self.training)
        return Path(directory)

    # -------------------------------------------------------------- reading images
    @torch.no_grad()
    def _run(self, images, batch_size: int = 512) -> tuple[torch.Tensor, dict]:
        x = to_judge_size(as_tensor(images), self.net.config.image_size)
        feats, preds = [], {a: [] for a in self.net.heads}
        for i in range(0, len(x), batch_size):
            f, logits = self.net(x[i:i + batch_size])
            feats.append(f)
            for a, v in logits.items():
                preds[a].append(v.argmax(1))
        return torch.cat(feats), {a: torch.cat(p).numpy() for a, p in preds.items()}

    def predict(self, images) -> dict:
        """{attribute: (N,) class indices in the order of CLASSES[attribute]}."""
        pred = self._run(images)[1]
        return {a: pred[a] for a in ATTRIBUTES}

    def corruption(self, images) -> dict:
        """Mean judged corruption level per kind ({"blur": sigma, "noise": std, "wash": amount}; 0 = clean)."""
        pred = self._run(images)[1]
        return {c: float(np.mean(np.asarray(levels)[pred[c]])) for c, levels in CORRUPTIONS.items()}

    def features(self, images) -> torch.Tensor:
        """(N, feature_dim) penultimate features: the space of `frechet`."""
        return self._run(images)[0]

    def agreement(self, images, targets, attributes=None) -> dict:
        """Fraction of images whose judged class equals the target's, per attribute, and their mean.

        targets: one ShapeAttributes / attribute dict per image, or {attribute: labels}; attributes:
        which to score (default: all six for attribute objects, the dict's keys for label dicts)."""
        truth = labels(targets, attributes)
        pred = self.predict(images)
        if any(len(v) != len(pred["shape"]) for v in truth.values()):
            raise ValueError(f"{len(pred['shape'])} images but targets of lengths {[len(v) for v in truth.values()]}")
        return _summary(pred, truth)

    # -------------------------------------------------------------- its own accuracy
    def real_accuracy(self, num: int = 256, sizes: tuple = (32, 64)) -> dict:
        """Accuracy per attribute on fresh real val and holdout renders at each size (cached).

        {"val": {...}, "holdout": {...}, "val@64": {...}, ...}: the first size unsuffixed."""
        if self._accuracy is None or self._accuracy[0] != (num, sizes):
            result = {"num": num}
            for size in sizes:
                for split in ("val", "holdout"):
                    x, attrs = real_images(split, num, size, seed=REAL_SEED + 1)
                    key = split if size == sizes[0] else f"{split}@{size}"
                    result[key] = self.agreement(x, attrs)
            self._accuracy = ((num, sizes), result)
        return self._accuracy[1]

    def accuracy_line(self) -> str:
        """One line to print beside every figure the judge makes."""
        acc = self.real_accuracy()
        parts = []
        for key, v in acc.items():
            if isinstance(v, dict):
                worst = min(ATTRIBUTES, key=lambda a: v[a])
                parts.append(f"{key} min {v[worst]:.3f} ({worst})")
        return f"judge accuracy on {acc['num']} real images per split, worst attribute: " + ", ".join(parts)

    # -------------------------------------------------------------- image-set measures
    def sharpness(self, images, reference=None) -> dict:
        """Palette fraction and edge energy of `images`, and as ratios to real images of the same size.

        reference: real images to compare with (e.g. renders of the targets); default 256 real val renders."""
        x = as_tensor(images)
        ref = as_tensor(reference) if reference is not None else real_images("val", 256, x.shape[-1])[0]
        if ref.shape[-1] != x.shape[-1]:
            raise ValueError(f"reference images are {ref.shape[-1]} px but images are {x.shape[-1]} px; "
                             f"sharpness compares images of the same resolution")
        p, e, p_ref, e_ref = palette_fraction(x), edge_energy(x), palette_fraction(ref), edge_energy(ref)
        return {"sharpness": p / p_ref * min(1.0, e / e_ref), "palette": p, "edge_energy": e,
                "palette_ratio": p / p_ref, "edge_ratio": e / e_ref,
                "real": {"palette": p_ref, "edge_energy": e_ref}, "image_size": int(x.shape[-1])}

    def frechet(self, images, reference=None, floor_sets: int = 3) -> dict:
        """Frechet distance in judge features to real val images, beside the real-vs-real floor.

        reference: real images (default: len(images) real val renders at the same size). The floor is the
        mean distance of `floor_sets` other real sets of the same size, disjoint from the reference."""
        x = as_tensor(images)
        n, size = len(x), x.shape[-1]
        pool = real_images("val", n * (floor_sets + 1), size)[0]
        ref = as_tensor(reference) if reference is not None else pool[:n]
        f_ref = self.features(ref)
        d = frechet_distance(self.features(x), f_ref)
        floor = float(np.mean([frechet_distance(self.features(pool[n * (k + 1):n * (k + 2)]), f_ref)
                               for k in range(floor_sets)]))
        return {"frechet": d, "floor": floor, "ratio": d / floor if floor > 0 else float("inf"), "num": n}

    def diversity(self, images) -> dict:
        """How varied a set is (e.g. samples of one prompt): distinct judged classes and mean pairwise RMS
        pixel distance (RGB in [0, 1])."""
        x = as_tensor(images)
        pred = self.predict(x)
        flat = ((x + 1) / 2).flatten(1)
        n = len(flat)
        d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5                       # (N, N) RMS distances
        pixel = float(d.sum() / (n * (n - 1))) if n > 1 else 0.0
        return {"distinct": {a: int(len(np.unique(pred[a]))) for a in ATTRIBUTES}, "pixel_distance": pixel, "num": n}


# ----------------------------------------------------------------------------- training

def _all_combinations() -> list:
    return [shapes.ShapeAttributes(s, c, z, p, b, h) for s in shapes.SHAPES for c in shapes.COLOR_NAMES
            for z in shapes.SIZES for p in shapes.POSITIONS for b in shapes.BACKGROUNDS for h in (False, True)]


def _augment(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Corruptions a decoder's output may show (CORRUPTIONS, plus small colour offsets and one-pixel shifts).

    Returns the images and {corruption: (N,) level index}; about half of each batch stays clean."""
    from torchvision.transforms.functional import gaussian_blur

    n = len(x)
    level = {c: torch.where(torch.rand(n, generator=g) < p, torch.randint(1, len(CORRUPTIONS[c]), (n,), generator=g), 0)
             for c, p in (("blur", 0.4), ("noise", 0.4), ("wash", 0.25))}
    value = {c: torch.tensor(CORRUPTIONS[c])[level[c]] for c in CORRUPTIONS}
    x = x.clone()
    for k, sigma in enumerate(CORRUPTIONS["blur"][1:], start=1):
        idx = level["blur"] == k
        if idx.any():
            x[idx] = gaussian_blur(x[idx], 5, sigma)
    w = value["wash"][:, None, None, None]
    x = (1 - w) * x + w * x.mean((1, 2, 3), keepdim=True)
    x = x + value["noise"][:, None, None, None] * torch.randn(x.shape, generator=g)
    x = x + (torch.rand(n, 1, 1, 1, generator=g) < 0.5) * 0.1 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    shift = torch.randint(-1, 2, (n, 2), generator=g)
    for dy, dx in {tuple(s) for s in shift.tolist()}:
        idx = (shift[:, 0] == dy) & (shift[:, 1] == dx)
        x[idx] = torch.roll(x[idx], (dy, dx), (2, 3))
    return x.clamp(-1, 1), level


def train_judge(out_dir=WEIGHTS_DIR, epochs: int = 40, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                sizes: tuple = (32, 64), max_steps: int | None = None, progress: bool = True) -> dict:
    """Train a judge on every combination of the world rendered at `sizes`, save it to `out_dir`, return a record.

    Seeded and deterministic on one thread. The record (also training.json) holds the loss and the judge's
    accuracy on fresh real val / holdout images measured at the end."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    combos = _all_combinations()
    x = torch.cat([to_judge_size(as_tensor([shapes.render(a, s) for a in combos])) for s in sizes])
    y = {a: torch.from_numpy(np.tile(v, len(sizes))) for a, v in labels(combos).items()}
    net = JudgeNet(JudgeConfig())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * (len(x) // batch_size) if max_steps is None else max_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    start, step, losses = time.time(), 0, []
    with tqdm(total=total, desc="train judge", disable=not progress) as bar:
        while step < total:
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(order) - batch_size + 1, batch_size):
                idx = order[i:i + batch_size]
                xb, level = _augment(x[idx], g)
                _, logits = net(xb)
                # Attributes are learnt from mildly corrupted images only (blur up to 0.5 px, light wash):
                # heavier blur makes a small circle and a small hexagon one picture. Corruption heads see all.
                mild = ((level["blur"] <= 1) & (level["wash"] <= 1)).float()
                loss = sum((F.cross_entropy(logits[a], y[a][idx], reduction="none") * mild).sum() / mild.sum()
                           for a in ATTRIBUTES) + sum(F.cross_entropy(logits[c], level[c]) for c in CORRUPTIONS)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                step += 1
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
                if step >= total:
                    break
    judge = ShapesJudge(net)
    w = max(1, min(50, step // 5))                                            # loss averaged over w steps
    record = {"seed": seed, "steps": step, "batch_size": batch_size, "lr": lr, "sizes": list(sizes),
              "combinations": len(combos), "train_seconds": round(time.time() - start, 1),
              "initial_loss": float(np.mean(losses[:w])), "final_loss": float(np.mean(losses[-w:])),
              "params": sum(p.numel() for p in net.parameters())}
    record["real_accuracy"] = judge.real_accuracy()
    judge.training = record
    if out_dir is not None:
        judge.save(out_dir)
    return record


if __name__ == "__main__":                       # python -m clipkit.shapes.judge: retrain the shipped judge
    torch.set_num_threads(1)
    print(json.dumps(train_judge(), indent=2))
