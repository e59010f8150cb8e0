"""An independent judge for any labelled image data: a small CNN trained on real images and their labels.

    from clipkit.evaluation.judge import Judge
    from clipkit.evaluation.judge_train import JudgeTrainConfig, train_judge
    train_judge(JudgeTrainConfig(train_data="data/icons/train", val_data="data/icons/val",
                                 label_field=["name"], out_dir="runs/judge"))       # writes runs/judge/judge/
    judge = Judge.load("runs/judge")
    print(judge.accuracy_line())                       # its own accuracy on real held-out images
    judge.identify(images, {"name": labels})           # top-1 / top-5: does it name the intended label?
    judge.frechet(images, real_images)                 # Frechet in its features, x the real-vs-real floor
    judge.predict(images); judge.features(images)      # PIL list or (N, 3, H, W) in [-1, 1]

    clipkit judge train --train-data data/icons/train --val-data data/icons/val --label-field name --out runs/judge
    clipkit judge score --judge runs/judge --images gen/ --labels gen/labels.csv --real-data data/icons/val

Why a judge of its own: scoring a generator's pixels with the CLIP that conditioned it
grades the generator with its own teacher. This network never sees a CLIP nor a
generated image: it learns the data's labels (one head per label field, e.g. an icon's
name, or the shapes world's six attributes: clipkit.shapes.judge is this judge with
shipped weights) from real images, with mild blur, noise, washed-out colour and small
shifts so that it still reads slightly imperfect images. Extra heads name those
corruptions (CORRUPTIONS): a network trained only to be robust to blur forgets it,
naming it keeps blur visible in its features, the space of `frechet`.

The architecture: 3x3 convolutions, the first at full resolution and each next one
halving it down to 4 px, flattened into `feature_dim` features (before a ReLU: the
Frechet space) and one linear head per label field. Inputs of another size are
area-averaged (integer factors) or antialias-resized to `image_size` first.
A saved judge is a folder: config.json (kind, widths, feature_dim, image_size,
classes per field), model.safetensors, training.json (what it measured on real
held-out images when it was trained: print it beside every figure it makes).
Model-free measures (noise / sharpness, pixel nearest-source) are in image_stats.py;
scoring a folder of generated images is judge_score.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipkit import __version__
from clipkit.config import SAVED_METADATA, config_from_dict
from clipkit.evaluation.image_stats import frechet_ratio, resize_to
from clipkit.images import to_rgb
from clipkit.io import MANIFEST_NAME, read_json, read_manifest, staged_output, write_json, write_manifest
from clipkit.io.weights import fit_weights, load_weights, save_weights

JUDGE_FORMAT = "clipkit-judge"  # the manifest format of a saved judge folder

KIND = "clipkit-judge"
# Corruptions the judge also learns to name (levels; 0 = clean): Gaussian blur sigma in pixels of a 32-px image
# (scaled with the image size), noise std in [-1, 1] units, washing out towards grey.
CORRUPTIONS = {"blur": (0.0, 0.5, 0.8, 1.2), "noise": (0.0, 0.03, 0.08), "wash": (0.0, 0.15, 0.3)}


def default_widths(image_size: int) -> tuple:
    """Conv widths that bring `image_size` down to 4 px: (32, 64, 64, 32) at 32 px (the shapes judge's),
    (16, 32, 64, 128, 64) at 64 px (narrow where the resolution is high: ~260 samples/s on one bf16 thread)."""
    halvings = int(np.log2(image_size / 4)) if image_size >= 4 else 0
    if 4 * 2**halvings != image_size or halvings < 2:
        raise ValueError(f"image_size={image_size}; the judge needs 4 x a power of two >= 16 (16, 32, 64, 128, ...)")
    if halvings == 3:
        return (32, 64, 64, 32)
    return (*[min(128, 16 * 2**i) for i in range(halvings)], 64)


def default_architecture(image_size: int) -> dict:
    """{"widths", "stem_stride"} for a judge at `image_size`: up to 32 px default_widths at full resolution;
    from 64 px a stride-2 first convolution (a learnt 2x downsampling) and default_widths(image_size // 2).
    Measured on 300 icon names at 64 px, 60 s of one CPU thread each: 0.76 top-1 held out with the stride-2
    stem, 0.65 at full resolution (fewer steps in the time), 0.00 without BatchNorm."""
    if image_size >= 64:
        return {"widths": default_widths(image_size // 2), "stem_stride": 2}
    return {"widths": default_widths(image_size), "stem_stride": 1}


@dataclass(frozen=True)
class JudgeConfig:
    widths: tuple = (32, 64, 64, 32)  # conv widths; all but the first halve the resolution: image_size -> 4 px
    feature_dim: int = 64  # penultimate features (the Frechet space)
    image_size: int = 32  # every input is brought to this size first
    classes: dict = field(default_factory=dict)  # label field -> class names (a head each)
    corruptions: bool = True  # heads naming CORRUPTIONS
    norm: bool = False  # BatchNorm after each convolution (learns many classes in far fewer steps)
    stem_stride: int = 1  # stride of the first convolution (2: a learnt 2x downsampling, 1/4 the cost)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "classes", {str(k): tuple(str(c) for c in v) for k, v in self.classes.items()})
        if self.image_size // self.stem_stride // 2 ** (len(self.widths) - 1) < 1:
            raise ValueError(f"widths={self.widths} halve image_size={self.image_size} below 1 px; use fewer layers")
        if not self.classes:
            raise ValueError("classes is empty; expected {label field: [class names]}, e.g. {'name': [...]}")
        clash = set(self.classes) & set(CORRUPTIONS) if self.corruptions else set()
        if clash:
            raise ValueError(f"label fields {sorted(clash)} clash with the corruption heads; rename them")

    def to_json(self) -> dict:
        return {**asdict(self), "widths": list(self.widths), "classes": {k: list(v) for k, v in self.classes.items()}}


class JudgeNet(nn.Module):
    """conv stack (image_size -> 4 px) -> flatten -> feature_dim -> one linear head per label field (+ corruptions)."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for i, w in enumerate(config.widths):
            layers += [
                nn.Conv2d(c_in, w, 3, stride=config.stem_stride if i == 0 else 2, padding=1, bias=not config.norm),
                *([nn.BatchNorm2d(w)] if config.norm else []),
                nn.ReLU(),
            ]
            c_in = w
        self.convs = nn.Sequential(*layers)
        side = config.image_size // config.stem_stride // 2 ** (len(config.widths) - 1)
        self.features = nn.Linear(c_in * side * side, config.feature_dim)
        sizes = {f: len(c) for f, c in config.classes.items()}
        if config.corruptions:
            sizes.update({c: len(v) for c, v in CORRUPTIONS.items()})
        self.heads = nn.ModuleDict({f: nn.Linear(config.feature_dim, n) for f, n in sizes.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        f = self.features(self.convs(x).flatten(1))  # (N, feature_dim), before the ReLU
        h = F.relu(f)
        return f, {a: head(h) for a, head in self.heads.items()}


# ----------------------------------------------------------------------------- inputs


def as_tensor(images) -> torch.Tensor:
    """PIL list, (N, 3, H, W) float tensor in [-1, 1] or uint8 tensor -> float (N, 3, H, W) in [-1, 1], square."""
    if isinstance(images, torch.Tensor):
        x = pixels_to_x(images.cpu()) if images.dtype == torch.uint8 else images.detach().float().cpu()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image tensor has shape {tuple(x.shape)}; expected (N, 3, H, W) in [-1, 1]")
    else:
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


def pixels_to_x(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- the judge

JudgeT = TypeVar("JudgeT", bound="Judge")


class Judge:
    """A trained JudgeNet and the measures built on it (see the module docstring)."""

    kind = KIND
    train_hint = "train one with `clipkit judge train --train-data SHARDS --label-field F --out DIR`"

    def __init__(self, net: JudgeNet, training: dict | None = None):
        self.net = net.eval()
        self.training = training or {}

    @property
    def classes(self) -> dict:
        return self.net.config.classes

    @property
    def fields(self) -> tuple:
        return tuple(self.net.config.classes)

    @classmethod
    def load(cls: type[JudgeT], directory) -> JudgeT:
        """A judge saved by `save` / `clipkit judge train` (the run folder or its judge/ subfolder)."""
        directory = Path(directory)
        if not (directory / "model.safetensors").is_file() and (directory / "judge" / "model.safetensors").is_file():
            directory = directory / "judge"
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{str(directory)!r} is not a saved judge: {name} is missing; {cls.train_hint}")
        if (directory / MANIFEST_NAME).exists():  # sha256 of every file (judges saved before: unverified)
            read_manifest(directory, JUDGE_FORMAT, fix=cls.train_hint, what="judge")
        data = read_json(directory / "config.json", "judge config")
        if data.get("kind") != cls.kind:
            raise ValueError(f"{str(directory)!r} holds a {data.get('kind')!r}, expected a {cls.kind!r}")
        net = JudgeNet(cls._config(data))
        weights = directory / "model.safetensors"
        fit_weights(net, load_weights(weights, fix=cls.train_hint), weights, fix=cls.train_hint)
        training = directory / "training.json"
        return cls(net, json.loads(training.read_text()) if training.is_file() else None)

    @classmethod
    def _config(cls, data: dict) -> JudgeConfig:
        return config_from_dict(JudgeConfig, data, "judge", ignore=SAVED_METADATA)

    def _config_json(self) -> dict:
        return self.net.config.to_json()

    def save(self, directory, overwrite: bool = False) -> Path:
        """config.json + model.safetensors + training.json + manifest.json, complete or absent; a previous
        judge at `directory` is replaced, anything else only with `overwrite` (clipkit.io.staged_output)."""
        with staged_output(directory, JUDGE_FORMAT, overwrite=overwrite) as stage:
            tmp = stage.dir
            save_weights(self.net.state_dict(), tmp / "model.safetensors", metadata={"format": "pt", "kind": self.kind})
            write_json(tmp / "config.json", {"kind": self.kind, "clipkit_version": __version__, **self._config_json()})
            write_json(tmp / "training.json", self.training)
            write_manifest(
                tmp, JUDGE_FORMAT, dict.fromkeys(("model.safetensors", "config.json", "training.json")), kind=self.kind
            )
        return Path(directory)

    # -------------------------------------------------------------- reading images
    @torch.no_grad()
    def logits(self, images, batch_size: int = 512) -> tuple[torch.Tensor, dict]:
        """(features (N, feature_dim), {head: logits (N, classes)}) of images at any square size."""
        x = resize_to(as_tensor(images), self.net.config.image_size)
        feats: list[torch.Tensor] = []
        out: dict[str, list[torch.Tensor]] = {a: [] for a in self.net.heads}
        for i in range(0, len(x), batch_size):
            f, logits = self.net(x[i : i + batch_size])
            feats.append(f)
            for a, v in logits.items():
                out[a].append(v)
        return torch.cat(feats), {a: torch.cat(v) for a, v in out.items()}

    def predict(self, images) -> dict:
        """{label field: (N,) class indices in the order of classes[field]}."""
        logits = self.logits(images)[1]
        return {f: logits[f].argmax(1).numpy() for f in self.fields}

    def features(self, images) -> torch.Tensor:
        """(N, feature_dim) penultimate features: the space of `frechet`."""
        return self.logits(images)[0]

    def corruption(self, images) -> dict:
        """Mean judged corruption level per kind ({"blur": sigma, "noise": std, "wash": amount}; 0 = clean)."""
        if not self.net.config.corruptions:
            return {}
        logits = self.logits(images)[1]
        return {c: float(np.mean(np.asarray(levels)[logits[c].argmax(1).numpy()])) for c, levels in CORRUPTIONS.items()}

    def label_indices(self, label_field: str, labels) -> np.ndarray:
        """Class indices of `labels` (names, or ints taken as indices); -1 for a name the judge does not know."""
        if label_field not in self.classes:
            raise ValueError(f"label field {label_field!r} is not one of this judge's {list(self.fields)}")
        index = {c: i for i, c in enumerate(self.classes[label_field])}
        return np.array(
            [
                int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else index.get(str(v), -1)
                for v in labels
            ],
            dtype=np.int64,
        )

    def identify(self, images, labels: dict, k: int = 5) -> dict:
        """Does the judge name each image's intended label? Per field: top-1, top-k, chance, how many were scored.

        labels: {field: one label per image}. Labels the judge never saw (e.g. unseen names) are left out of the
        scores and counted in "unknown"; a field with none known reports None scores."""
        logits = self.logits(images)[1]
        out = {}
        for label_field, values in labels.items():
            idx = self.label_indices(label_field, values)
            if len(idx) != len(logits[self.fields[0]]):
                raise ValueError(f"{len(logits[self.fields[0]])} images but {len(idx)} {label_field!r} labels")
            known = idx >= 0
            n, classes = int(known.sum()), len(self.classes[label_field])
            row = {
                "top1": None,
                f"top{k}": None,
                "chance": 1.0 / classes,
                "num": n,
                "unknown": int((~known).sum()),
                "classes": classes,
            }
            if n:
                scores, truth = logits[label_field][torch.from_numpy(known)], torch.from_numpy(idx[known])
                top = scores.topk(min(k, classes), dim=1).indices
                row["top1"] = float((top[:, 0] == truth).float().mean())
                row[f"top{k}"] = float((top == truth[:, None]).any(1).float().mean())
            out[label_field] = row
        return out

    # -------------------------------------------------------------- its own accuracy
    def accuracy_line(self) -> str:
        """One line to print beside every figure the judge makes: its accuracy on real held-out images."""
        acc = self.training.get("real_accuracy") or {}
        parts = [
            f"{f} top-1 {v['top1']:.3f} top-5 {v['top5']:.3f} ({v['num']} images)"
            for f, v in acc.items()
            if isinstance(v, dict) and v.get("top1") is not None
        ]
        return "judge accuracy on real held-out images: " + ("; ".join(parts) if parts else "not recorded")

    # -------------------------------------------------------------- image-set measures
    def frechet(self, images, real, seed: int = 0) -> dict:
        """Frechet distance in judge features to half of `real`, with the floor of the other half (image_stats)."""
        return frechet_ratio(self.features(images), self.features(real), seed=seed)
