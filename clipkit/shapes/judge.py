"""An independent judge of shapes-world images: a small CNN trained on the world's TRUE attributes, not on CLIP.

It is clipkit.evaluation.judge.Judge with the six attributes as label fields, shipped
weights, and the world's own measures (agreement with attribute objects, palette
sharpness, Frechet against fresh renders, diversity) on top.

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
antialias-resized to 32 px first. Retrain with `train_judge()` (seeded; through the one
loop, as clipkit.evaluation.judge_train.fit_judge trains every judge); the shipped
folder holds config.json, model.safetensors and training.json (what it measured on real
images when it was trained; the shipped weights predate the move to the one loop).

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
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from clipkit.config import SAVED_METADATA, config_from_dict
from clipkit.evaluation.image_stats import frechet_distance, resize_to  # noqa: F401  (frechet_distance: public here)
from clipkit.evaluation.judge import CORRUPTIONS, Judge, JudgeConfig, JudgeNet, as_tensor  # noqa: F401
from clipkit.evaluation.judge_train import JudgeTrainConfig, fit_judge
from clipkit.shapes import world as shapes

WEIGHTS_DIR = Path(__file__).with_name("judge_weights")
KIND = "shapes-judge"
ATTRIBUTES = ("shape", "color", "size", "position", "hat", "background")
CLASSES = {
    **{a: tuple(shapes.attribute_classes(a)) for a in shapes.ATTRIBUTES},
    "background": tuple(shapes.BACKGROUNDS),
}
PALETTE = torch.tensor([*shapes.COLORS.values(), *shapes.BACKGROUNDS.values(), shapes.HAT_COLOR]) / 255.0  # (12, 3)
PALETTE_TOLERANCE = 0.1
REAL_SEED = 9_001  # seeds of the real reference images, far from the demo's and the tests' streams
SHAPES_WIDTHS, SHAPES_FEATURES = (32, 64, 64, 32), 64


def shapes_config(
    widths: tuple = SHAPES_WIDTHS, feature_dim: int = SHAPES_FEATURES, image_size: int = 32
) -> JudgeConfig:
    """The generic judge's config with the six attributes as label fields (and the corruption heads)."""
    return JudgeConfig(
        widths=tuple(widths),
        feature_dim=feature_dim,
        image_size=image_size,
        classes={a: CLASSES[a] for a in ATTRIBUTES},
        corruptions=True,
    )


# ----------------------------------------------------------------------------- inputs


def to_judge_size(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Area-average by an integer factor (what shapes.render does), else antialiased bilinear resize."""
    return resize_to(x, size)


def labels(targets, attributes=None) -> dict:
    """{attribute: (N,) int array} from ShapeAttributes / attribute dicts, or a {attribute: labels} dict."""
    names = set(targets if isinstance(targets, dict) else ()) | set(attributes or ())
    if names - set(ATTRIBUTES):
        raise ValueError(f"unknown attributes {sorted(names - set(ATTRIBUTES))}; expected some of {ATTRIBUTES}")
    if isinstance(targets, dict):
        return {a: np.asarray(v, dtype=np.int64) for a, v in targets.items() if attributes is None or a in attributes}
    rows = [t if isinstance(t, dict) else asdict(t) for t in targets]
    return {
        a: np.array([int(bool(r[a])) if a == "hat" else CLASSES[a].index(r[a]) for r in rows], dtype=np.int64)
        for a in attributes or ATTRIBUTES
    }


@functools.lru_cache(maxsize=16)
def real_images(split: str, num: int, size: int, seed: int = REAL_SEED) -> tuple[torch.Tensor, tuple]:
    """`num` real renders of `split` at `size` px as (N, 3, S, S) in [-1, 1], with their attributes (cached)."""
    samples = list(shapes.generate(split, num, seed=seed, image_size=size))
    return as_tensor([s.image for s in samples]), tuple(s.attributes for s in samples)


# ----------------------------------------------------------------------------- measures without the network


def palette_fraction(x: torch.Tensor) -> float:
    """Fraction of pixels within PALETTE_TOLERANCE of one of the world's 12 colours."""
    rgb = (x + 1) / 2  # (N, 3, H, W) in [0, 1]
    d = torch.cdist(rgb.permute(0, 2, 3, 1).reshape(-1, 3), PALETTE.to(rgb))  # (N*H*W, 12)
    return float((d.min(1).values <= PALETTE_TOLERANCE).float().mean())


def edge_energy(x: torch.Tensor) -> float:
    """Mean squared difference of horizontal plus vertical neighbours, RGB in [0, 1]."""
    rgb = (x + 1) / 2
    return float(
        (rgb[..., :, 1:] - rgb[..., :, :-1]).pow(2).mean() + (rgb[..., 1:, :] - rgb[..., :-1, :]).pow(2).mean()
    )


def _summary(pred: dict, truth: dict) -> dict:
    per = {a: float((pred[a] == truth[a]).mean()) for a in truth}
    return {"mean": float(np.mean(list(per.values()))), **per}


# ----------------------------------------------------------------------------- the judge


class ShapesJudge(Judge):
    """The generic judge with the world's attributes, shipped weights and measures (see the module docstring)."""

    kind = KIND
    train_hint = "train one with clipkit.shapes.judge.train_judge(out_dir=...)"

    def __init__(self, net: JudgeNet, training: dict | None = None):
        super().__init__(net, training)
        self._accuracy: tuple[tuple[int, tuple], dict] | None = None

    @classmethod
    def load(cls, directory=None) -> ShapesJudge:
        """The shipped judge (clipkit/shapes/judge_weights), or one saved by `train_judge(out_dir=...)`."""
        return super().load(directory if directory is not None else WEIGHTS_DIR)

    @classmethod
    def _config(cls, data: dict) -> JudgeConfig:
        # A shapes judge's config.json holds the architecture only; the label fields are the world's.
        saved = config_from_dict(JudgeConfig, {**data, "classes": CLASSES}, "judge", ignore=SAVED_METADATA)
        return shapes_config(saved.widths, saved.feature_dim, saved.image_size)

    def _config_json(self) -> dict:
        c = self.net.config
        return {"widths": list(c.widths), "feature_dim": c.feature_dim, "image_size": c.image_size}

    def _run(self, images) -> tuple[torch.Tensor, dict]:
        feats, logits = self.logits(images)
        return feats, {a: v.argmax(1).numpy() for a, v in logits.items()}

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
            result: dict = {"num": num}
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
            raise ValueError(
                f"reference images are {ref.shape[-1]} px but images are {x.shape[-1]} px; "
                f"sharpness compares images of the same resolution"
            )
        p, e, p_ref, e_ref = palette_fraction(x), edge_energy(x), palette_fraction(ref), edge_energy(ref)
        return {
            "sharpness": p / p_ref * min(1.0, e / e_ref),
            "palette": p,
            "edge_energy": e,
            "palette_ratio": p / p_ref,
            "edge_ratio": e / e_ref,
            "real": {"palette": p_ref, "edge_energy": e_ref},
            "image_size": int(x.shape[-1]),
        }

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
        floor = float(
            np.mean(
                [frechet_distance(self.features(pool[n * (k + 1) : n * (k + 2)]), f_ref) for k in range(floor_sets)]
            )
        )
        return {"frechet": d, "floor": floor, "ratio": d / floor if floor > 0 else float("inf"), "num": n}

    def diversity(self, images) -> dict:
        """How varied a set is (e.g. samples of one prompt): distinct judged classes and mean pairwise RMS
        pixel distance (RGB in [0, 1])."""
        x = as_tensor(images)
        pred = self.predict(x)
        flat = ((x + 1) / 2).flatten(1)
        n = len(flat)
        d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5  # (N, N) RMS distances
        pixel = float(d.sum() / (n * (n - 1))) if n > 1 else 0.0
        return {"distinct": {a: int(len(np.unique(pred[a]))) for a in ATTRIBUTES}, "pixel_distance": pixel, "num": n}


# ----------------------------------------------------------------------------- training


def _all_combinations() -> list:
    return [
        shapes.ShapeAttributes(s, c, z, p, b, h)
        for s in shapes.SHAPES
        for c in shapes.COLOR_NAMES
        for z in shapes.SIZES
        for p in shapes.POSITIONS
        for b in shapes.BACKGROUNDS
        for h in (False, True)
    ]


def train_judge(
    out_dir=WEIGHTS_DIR,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    sizes: tuple = (32, 64),
    max_steps: int | None = None,
    progress: bool = True,
    run_dir=None,
) -> dict:
    """Train a judge on every combination of the world rendered at `sizes`, save it to `out_dir`, return a record.

    Through clipkit.evaluation.judge_train.fit_judge (the one loop; its run folder, checkpoints and metrics go to
    `run_dir`, a temporary folder by default). Seeded and deterministic on one thread. The record (also
    training.json) holds the loss and the judge's accuracy on fresh real val / holdout images measured at the end."""
    combos = _all_combinations()
    x = torch.cat([to_judge_size(as_tensor([shapes.render(a, s) for a in combos])) for s in sizes])
    y = {a: np.tile(v, len(sizes)) for a, v in labels(combos).items()}
    steps = max_steps or epochs * (len(x) // batch_size)
    with tempfile.TemporaryDirectory(prefix="shapes-judge-run-") as tmp:
        config = JudgeTrainConfig(
            out_dir=str(run_dir or tmp),
            train_data="(shapes renders)",
            seed=seed,
            batch_size=batch_size,
            lr=lr,
            epochs=epochs,
            max_steps=max_steps,
            warmup_steps=max(1, int(0.15 * steps)),
            mixed_precision="no",
            progress=progress,
            log_every=max(1, min(50, steps)),
        )
        judge, record = fit_judge(config, shapes_config(), x, y, judge_cls=ShapesJudge)
    assert isinstance(judge, ShapesJudge)
    record.update({"sizes": list(sizes), "combinations": len(combos)})
    record["real_accuracy"] = judge.real_accuracy()
    judge.training = record
    if out_dir is not None:
        judge.save(out_dir)
    return record


if __name__ == "__main__":  # python -m clipkit.shapes.judge: retrain the shipped judge
    torch.set_num_threads(1)
    print(json.dumps(train_judge(), indent=2))
