"""The generation lab's world: shapes images, partial prompts as condition vectors, palette tokens, pixel orders.

    data = world_data(32)                       # every train-split combination: images, labels, palette tokens
    labels = prompt_labels({"shape": "circle"}) # (6,) class index per attribute, -1 = "any"
    c = condition(labels[None])                 # (1, COND_DIM): the one condition all three families read
    prompt_text({"shape": "circle", "color": "red"})   -> "a red circle"
    order = pixel_order("spread", 32)           # sequence index -> pixel index

A prompt names some attributes and leaves the rest free, so "a circle" has
many correct images (any colour, size, position, background, with or without a
hat) while a prompt naming all six has exactly one. Training draws, per image,
a keep probability p ~ U(0, 1) and keeps each attribute with probability p, so
the models see every degree of specification, the empty prompt included (the
unconditional branch that guidance needs: 1/7 of the images).

Tokens: the world is drawn in 12 colours (8 shape colours, 3 backgrounds, the
hat's black); every pixel of a render is one of them except the anti-aliased
edge pixels, which are blends. The autoregressive model predicts the nearest
palette colour of each pixel: a categorical over 12 values, where a sample is
always a real colour (the average of red and blue is not) and nothing is lost
but the edge blending (the lab measures palette-quantised real images too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from clipkit.shapes import world as shapes
from clipkit.shapes.judge import ATTRIBUTES, CLASSES, PALETTE

COND_DIM = sum(len(CLASSES[a]) + 1 for a in ATTRIBUTES)  # one-hot per attribute + an "any" slot: 34
VOCAB = len(PALETTE)  # 12 palette colours
ORDERS = ("raster", "spread")


# ----------------------------------------------------------------------------- prompts and conditions


def prompt_labels(prompt: dict) -> torch.Tensor:
    """{attribute: value} (hat: True/False) -> (6,) long class indices in ATTRIBUTES order, -1 where free."""
    unknown = sorted(set(prompt) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown prompt attributes {unknown}; expected some of {ATTRIBUTES}")
    out = []
    for a in ATTRIBUTES:
        if a not in prompt:
            out.append(-1)
            continue
        value = ("hat" if prompt[a] else "no hat") if a == "hat" else prompt[a]
        if value not in CLASSES[a]:
            raise ValueError(f"prompt {a}={prompt[a]!r} is not one of {CLASSES[a]}")
        out.append(CLASSES[a].index(value))
    return torch.tensor(out, dtype=torch.long)


def condition(labels: torch.Tensor) -> torch.Tensor:
    """(N, 6) labels (-1 = any) -> (N, COND_DIM) unit vectors: per attribute a one-hot over its classes + any."""
    labels = torch.as_tensor(labels).long()
    parts = []
    for j, a in enumerate(ATTRIBUTES):
        n = len(CLASSES[a])
        idx = torch.where(labels[:, j] < 0, torch.full_like(labels[:, j], n), labels[:, j])
        parts.append(torch.nn.functional.one_hot(idx, n + 1).float())
    return torch.cat(parts, 1) / len(ATTRIBUTES) ** 0.5


def null_condition(batch: int = 1) -> torch.Tensor:
    """The empty prompt (every attribute free): the unconditional branch of guidance."""
    return condition(torch.full((batch, len(ATTRIBUTES)), -1))


def prompt_text(prompt: dict) -> str:
    """A readable caption for a prompt, in the world's own phrasing ("a large red circle wearing a hat")."""
    words = [prompt[a] for a in ("size", "color") if a in prompt]
    noun = prompt.get("shape", "shape")
    phrase = " ".join(words + [noun])
    text = f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"
    if "hat" in prompt:
        text += " wearing a hat" if prompt["hat"] else " without a hat"
    if "position" in prompt:
        text += " in the center" if prompt["position"] == "center" else f" on the {prompt['position']}"
    if "background" in prompt:
        text += f" on a {prompt['background']} background"
    return text


def random_masks(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training prompts: keep each attribute of each row with that row's probability p ~ U(0, 1)."""
    keep = torch.rand(len(labels), 1, generator=generator)
    drop = torch.rand(labels.shape, generator=generator) >= keep
    return torch.where(drop, torch.full_like(labels, -1), labels)


# ----------------------------------------------------------------------------- images and tokens


@dataclass
class WorldData:
    images: torch.Tensor  # (N, 3, S, S) float in [-1, 1]
    labels: torch.Tensor  # (N, 6) long, ATTRIBUTES order
    tokens: torch.Tensor  # (N, S*S) long palette indices, raster order

    def __len__(self) -> int:
        return len(self.labels)

    def matching(self, labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """n random row indices whose attributes agree with `labels` (6,) wherever it is not -1."""
        ok = ((self.labels == labels) | (labels < 0)).all(1).nonzero()[:, 0]
        if len(ok) == 0:
            raise ValueError(f"no image of the world matches labels {labels.tolist()}")
        return ok[torch.randint(0, len(ok), (n,), generator=generator)]


@functools.lru_cache(maxsize=4)
def world_data(image_size: int = 32) -> WorldData:
    """Every combination of the train split (held-out shape x colour pairs excluded): 3,360 images."""
    combos = [
        shapes.ShapeAttributes(s, c, z, p, b, h)
        for s in shapes.SHAPES
        for c in shapes.COLOR_NAMES
        for z in shapes.SIZES
        for p in shapes.POSITIONS
        for b in shapes.BACKGROUNDS
        for h in (False, True)
        if (s, c) not in shapes.HOLDOUT_COMBOS
    ]
    arr = np.stack([np.asarray(shapes.render(a, image_size), dtype=np.float32) for a in combos])
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0
    labels = torch.tensor(
        [
            [shapes.attribute_label(a, k) if k != "background" else CLASSES[k].index(a.background) for k in ATTRIBUTES]
            for a in combos
        ],
        dtype=torch.long,
    )
    return WorldData(images, labels, palette_tokens(images))


def palette_tokens(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) in [-1, 1] -> (N, S*S) index of the nearest palette colour, raster order."""
    rgb = ((images + 1) / 2).permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.cdist(rgb, PALETTE.to(rgb)).argmin(1).view(len(images), -1)


def tokens_to_images(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(N, S*S) palette indices (raster order) -> (N, 3, S, S) in [-1, 1]."""
    return (PALETTE[tokens.cpu()].view(len(tokens), side, side, 3).permute(0, 3, 1, 2) * 2 - 1).contiguous()


def coordinate_image(side: int) -> torch.Tensor:
    """(1, 3, S, S): x, y in [-1, 1] and their product; the one-shot regressor's fixed, prompt-free input."""
    axis = torch.linspace(-1, 1, side)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x, y, x * y])[None]


# ----------------------------------------------------------------------------- orders


def pixel_order(kind: str, side: int, seed: int = 0) -> torch.Tensor:
    """(S*S,) pixel indices in generation order.

    raster: row by row, so k consecutive pixels are a contiguous run of a row (neighbours);
    spread: coarse to fine (pixels on the grid of stride S/2, then the new ones of stride S/4, ... 1, as
    subscale orderings do), each level in a fixed random order, so k consecutive pixels lie far apart and
    most of their neighbours were decided in an earlier level."""
    n = side * side
    if kind == "raster":
        return torch.arange(n)
    if kind != "spread":
        raise ValueError(f"order={kind!r} is not one of {ORDERS}")
    if side & (side - 1):
        raise ValueError(f"the spread order needs a power-of-two side, got {side}")
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    level = torch.zeros(n, dtype=torch.long)  # 0 = the coarsest grid
    stride, lv = side, 0
    assigned = torch.zeros(n, dtype=torch.bool)
    while stride >= 1:
        on_grid = (ys % stride == 0) & (xs % stride == 0) & ~assigned
        level[on_grid], assigned = lv, assigned | on_grid
        stride, lv = stride // 2, lv + 1
    order = []
    for lv in range(int(level.max()) + 1):
        members = (level == lv).nonzero()[:, 0]
        order.append(members[torch.randperm(len(members), generator=g)])
    return torch.cat(order)
