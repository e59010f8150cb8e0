"""Image helpers shared by encoding, shards and folders."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Transparent pixels are composited on white (what a viewer shows), not left
# with whatever colour the transparent pixels happen to store.
_ALPHA_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...) as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: scale to 0..255 by the nominal range of the mode.
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if image.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def make_grid(images: list[Image.Image], columns: int = 8, pad: int = 2, background=(255, 255, 255),
              scale: int = 1) -> Image.Image:
    """Tile images (all the size of the first) into one picture."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), background)
    for i, im in enumerate(images):
        grid.paste(to_rgb(im).resize((w, h)), (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return grid
