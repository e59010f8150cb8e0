"""The shapes world: a deterministic generator of image-caption pairs.

Each sample is a coloured shape of some size at some position on a light
background, optionally wearing a black top hat. Every attribute is known, so
zero-shot accuracy, retrieval and the "hat vector" can be measured exactly.

Captions mention random subsets of the attributes in varied English
("a red circle", "a small red circle wearing a hat on the left",
"a hat on a green star") so that a model trained on them also understands
short prompts such as "a photo of a circle".

Splits:
  train      all attribute combinations except the held-out shape x colour pairs
  val        same distribution as train, other random stream
  holdout    only the held-out shape x colour pairs (compositional test)
  hat_pairs  pairs of images identical except for the hat (pair_id in attrs)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from clipkit.data.shards import write_shards

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart")
COLORS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 210, 0),
    "green": (30, 170, 60),
    "blue": (30, 80, 220),
    "purple": (140, 50, 190),
    "pink": (255, 110, 180),
    "brown": (130, 80, 30),
}
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")
BACKGROUNDS = {"white": (250, 250, 250), "gray": (175, 175, 175), "beige": (235, 215, 175)}
HAT_COLOR = (20, 20, 20)
ATTRIBUTES = ("shape", "color", "size", "position", "hat")
SPLITS = ("train", "val", "holdout", "hat_pairs")

# Held-out shape x colour combinations: a Latin-square diagonal, so every shape
# and every colour is seen in training, just never in these pairings.
COLOR_NAMES = tuple(COLORS)
HOLDOUT_COMBOS = frozenset((SHAPES[i], COLOR_NAMES[(3 * i + 1) % len(COLOR_NAMES)]) for i in range(len(SHAPES)))

# Geometry on a 32-pixel canvas; scaled for other sizes. Shapes sit low enough
# that a hat on top of the highest, largest one still fits in the image.
_RADIUS = {"small": 4.5, "large": 7.0}
_CENTERS = {"center": (16, 19), "left": (8.5, 19), "right": (23.5, 19), "top": (16, 13.5), "bottom": (16, 24)}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeAttributes:
    shape: str
    color: str
    size: str
    position: str
    background: str
    hat: bool

    def __post_init__(self):
        for name, value, valid in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, COLOR_NAMES),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
            ("background", self.background, tuple(BACKGROUNDS)),
        ):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not one of {valid}")


@dataclass
class ShapeSample:
    key: str
    image: Image.Image
    caption: str
    attributes: ShapeAttributes
    pair_id: int | None = None

    def metadata(self) -> dict:
        """JSON-ready record in img2dataset's spirit (key, caption, size, status) plus attributes."""
        meta = {
            "key": self.key,
            "caption": self.caption,
            "width": self.image.width,
            "height": self.image.height,
            "status": "success",
            **asdict(self.attributes),
        }
        if self.pair_id is not None:
            meta["pair_id"] = self.pair_id
        return meta


# ----------------------------------------------------------------------------- drawing


def _polygon(cx: float, cy: float, r: float, n: int, rotation: float = -math.pi / 2, inner: float | None = None):
    """Regular polygon (or star when `inner` is the inner radius ratio)."""
    points = []
    steps = 2 * n if inner else n
    for i in range(steps):
        rr = r * (inner if inner and i % 2 else 1.0)
        a = rotation + 2 * math.pi * i / steps
        points.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> float:
    """Draw `shape` centred at (cx, cy); return the y of its top edge (where a hat sits)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return cy - r
    if shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        return cy - s
    if shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        return cy - r
    if shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, inner=0.45), fill=fill)
        return cy - r
    if shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
        return cy - r
    if shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rotation=0.0), fill=fill)
        return cy - r * math.sin(math.pi / 3)
    if shape == "cross":
        w = r * 0.38
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        return cy - r
    if shape == "heart":
        lobe = r * 0.55
        draw.ellipse([cx - 2 * lobe + lobe * 0.1, cy - r * 0.75, cx + lobe * 0.1, cy - r * 0.75 + 2 * lobe], fill=fill)
        draw.ellipse([cx - lobe * 0.1, cy - r * 0.75, cx + 2 * lobe - lobe * 0.1, cy - r * 0.75 + 2 * lobe], fill=fill)
        draw.polygon([(cx - r * 0.98, cy - r * 0.1), (cx + r * 0.98, cy - r * 0.1), (cx, cy + r)], fill=fill)
        return cy - r * 0.75
    raise ValueError(f"shape={shape!r} is not one of {SHAPES}")


def _draw_hat(draw: ImageDraw.ImageDraw, cx: float, top: float, r: float, scale: float):
    """A black top hat: a brim wider than the crown, resting on the shape's top edge."""
    brim_w, brim_h = max(r * 0.9, 4.0 * scale), 1.3 * scale
    crown_w, crown_h = brim_w * 0.6, 4.0 * scale
    draw.rectangle([cx - brim_w, top - brim_h, cx + brim_w, top], fill=HAT_COLOR)
    draw.rectangle([cx - crown_w, top - brim_h - crown_h, cx + crown_w, top - brim_h + 0.5], fill=HAT_COLOR)


def render(attrs: ShapeAttributes, image_size: int = 32) -> Image.Image:
    """Render one sample, drawn at 4x and downsampled for anti-aliased edges."""
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small; expected >= 16")
    big = image_size * _SUPERSAMPLE
    scale = big / 32.0
    img = Image.new("RGB", (big, big), BACKGROUNDS[attrs.background])
    draw = ImageDraw.Draw(img)
    cx, cy = (c * scale for c in _CENTERS[attrs.position])
    r = _RADIUS[attrs.size] * scale
    top = _draw_shape(draw, attrs.shape, cx, cy, r, COLORS[attrs.color])
    if attrs.hat:
        _draw_hat(draw, cx, top + 0.5 * scale, r, scale)
    return img.resize((image_size, image_size), Image.Resampling.BOX)  # area average: no ringing


# ----------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: ShapeAttributes, rng: np.random.Generator) -> str:
    """A natural caption mentioning a random subset of the attributes."""
    noun = attrs.shape if rng.random() < 0.85 else str(rng.choice(["shape", "object", "figure"]))
    adjectives = []
    if rng.random() < 0.4:
        adjectives.append(attrs.size)
    if rng.random() < 0.6:
        adjectives.append(attrs.color)
    phrase = " ".join(adjectives + [noun])
    phrase = f"{_article(phrase)} {phrase}"

    where = ""
    if rng.random() < 0.4:
        where = (
            " in the center" if attrs.position == "center" else f" {rng.choice(['on the', 'at the'])} {attrs.position}"
        )
    background = f" on a {attrs.background} background" if rng.random() < 0.2 else ""

    if attrs.hat and rng.random() < 0.85:
        if rng.random() < 0.3:
            text = f"a hat on {phrase}{where}{background}"
        else:
            hat = rng.choice(["wearing a hat", "with a hat", "in a top hat", "wearing a black hat"])
            text = f"{phrase} {hat}{where}{background}"
    elif not attrs.hat and rng.random() < 0.3:
        text = f"{phrase} {rng.choice(['without a hat', 'with no hat', 'not wearing a hat'])}{where}{background}"
    else:
        text = f"{phrase}{where}{background}"
    prefix = rng.choice(["", "", "a photo of ", "an image of ", "a picture of ", "a drawing of "])
    if prefix:
        text = prefix + text
    return text


# ----------------------------------------------------------------------------- splits


def _split_rng(split: str, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    return np.random.default_rng([seed, SPLITS.index(split)])


def random_attributes(rng: np.random.Generator, split: str = "train", hat: bool | None = None) -> ShapeAttributes:
    """Draw attributes for `split`; holdout draws only held-out shape x colour pairs."""
    while True:
        shape = str(rng.choice(SHAPES))
        color = str(rng.choice(COLOR_NAMES))
        held_out = (shape, color) in HOLDOUT_COMBOS
        if held_out == (split == "holdout"):
            break
    return ShapeAttributes(
        shape=shape,
        color=color,
        size=str(rng.choice(SIZES)),
        position=str(rng.choice(POSITIONS)),
        background=str(rng.choice(list(BACKGROUNDS))),
        hat=bool(rng.random() < 0.5) if hat is None else hat,
    )


def generate(split: str = "train", num: int = 1000, seed: int = 0, image_size: int = 32) -> Iterator[ShapeSample]:
    """Yield `num` samples of `split`, identical for identical (split, seed, image_size).

    For `hat_pairs`, `num` counts images: pairs come as consecutive samples
    (without hat, then with hat) sharing `pair_id`; `num` must be even.
    """
    if num < 0:
        raise ValueError(f"num={num} must be >= 0")
    rng = _split_rng(split, seed)
    if split == "hat_pairs":
        if num % 2:
            raise ValueError(f"num={num} must be even for split='hat_pairs' (two images a pair)")
        for pair in range(num // 2):
            bare = random_attributes(rng, "train", hat=False)
            for with_hat in (False, True):
                attrs = ShapeAttributes(**{**asdict(bare), "hat": with_hat})
                yield ShapeSample(
                    f"{2 * pair + with_hat:08d}", render(attrs, image_size), caption(attrs, rng), attrs, pair_id=pair
                )
        return
    for i in range(num):
        attrs = random_attributes(rng, split)
        yield ShapeSample(f"{i:08d}", render(attrs, image_size), caption(attrs, rng), attrs)


# ----------------------------------------------------------------------------- prompts


def attribute_classes(attribute: str) -> tuple:
    """The class names of one attribute, in a fixed order."""
    return {"shape": SHAPES, "color": COLOR_NAMES, "size": SIZES, "position": POSITIONS, "hat": ("no hat", "hat")}[
        attribute
    ]


def attribute_prompts(attribute: str) -> list[str]:
    """Short zero-shot prompts, one per class of `attribute` (order of attribute_classes)."""
    if attribute == "shape":
        return [f"a photo of {_article(s)} {s}" for s in SHAPES]
    if attribute == "color":
        return [f"a photo of {_article(c)} {c} shape" for c in COLOR_NAMES]
    if attribute == "size":
        return [f"a photo of a {s} shape" for s in SIZES]
    if attribute == "position":
        return ["a photo of a shape in the center"] + [f"a photo of a shape on the {p}" for p in POSITIONS[1:]]
    if attribute == "hat":
        return ["a photo of a shape without a hat", "a photo of a shape wearing a hat"]
    raise ValueError(f"attribute={attribute!r} is not one of {ATTRIBUTES}")


def attribute_label(attrs: ShapeAttributes | dict, attribute: str) -> int:
    """Index of the true class of `attribute` (order of attribute_classes)."""
    value = attrs[attribute] if isinstance(attrs, dict) else getattr(attrs, attribute)
    if attribute == "hat":
        return int(bool(value))
    return attribute_classes(attribute).index(value)


def write_split(
    out_dir,
    split: str = "train",
    num: int = 20_000,
    seed: int = 0,
    shard_size: int = 5_000,
    image_size: int = 32,
    progress: bool = False,
) -> dict:
    """Write one split as img2dataset-style shards in `out_dir` (see clipkit.data.shards)."""

    return write_shards(
        generate(split, num, seed, image_size), out_dir, shard_size=shard_size, progress=progress, total=num
    )
