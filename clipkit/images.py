"""Image helpers shared by encoding, shards and folders.

    image = open_image("photo.jpg")          # RGB PIL image; BadImageError (a ValueError) names the file otherwise
    image = open_image(raw_bytes, what="shard sample 00042.jpg")
    rgb = to_rgb(pil_image)                  # any PIL mode as 8-bit RGB

`open_image` is the one decoder of files a user gives us (folders, `--image`,
shard members): a file that does not decode, an image of 0 pixels, or one
larger than `max_pixels` (a decompression bomb: a few KB that would decode to
gigabytes) raises BadImageError with a `reason` ("unreadable", "empty",
"too_large"); folder and shard readers skip and count those, a single query
turns them into one line.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from clipkit.io.errors import BadImageError

# PIL's own bomb limit (89.5 MP, ~ 9459 x 9459): larger images are refused before they are decoded.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def _bad(what: str, reason: str, detail: str) -> BadImageError:
    return BadImageError(f"{what}: {detail}", reason=reason)


def check_image_size(image: Image.Image, what: str = "image", max_pixels: int | None = MAX_IMAGE_PIXELS) -> None:
    """BadImageError for an image of 0 pixels or of more than `max_pixels` (from the header: nothing decoded)."""
    width, height = image.size
    if width < 1 or height < 1:
        raise _bad(what, "empty", f"the image is {width}x{height} pixels; an image needs at least one pixel")
    if max_pixels is not None and width * height > max_pixels:
        raise _bad(
            what,
            "too_large",
            f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over "
            f"the limit of {max_pixels / 1e6:.0f}; a decompression bomb or a scan to "
            f"shrink first",
        )


def open_image(source, what: str | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a path, bytes or binary file object into an RGB PIL image (see module docstring).

    A missing path raises FileNotFoundError; anything that cannot be used raises
    BadImageError naming `what` (default: the path) and why.
    """
    if isinstance(source, (str, os.PathLike)):
        what = what or str(source)
        if not Path(source).is_file():
            raise FileNotFoundError(f"{what}: no such image file {str(source)!r}")
    what = what or "image"
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(stream) as im:
                check_image_size(im, what, max_pixels)
                im.load()
                return to_rgb(im)
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise _bad(what, "too_large", f"a decompression bomb ({e})") from None
    except MemoryError:
        raise _bad(what, "too_large", "the image does not fit in memory once decoded") from None
    except OSError as e:
        if e.errno is not None:  # the disk, not the image (permissions, I/O error): say so
            raise
        raise _bad(
            what, "unreadable", f"cannot read the image ({str(e)[:160]}); it is damaged or not an image"
        ) from None
    except Exception as e:  # PIL raises many types on corrupt data (OSError, SyntaxError, struct.error, ...)
        raise _bad(
            what,
            "unreadable",
            f"cannot read the image ({type(e).__name__}: {str(e)[:160]}); it is damaged or not an image",
        ) from None


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


def make_grid(
    images: list[Image.Image], columns: int = 8, pad: int = 2, background=(255, 255, 255), scale: int = 1
) -> Image.Image:
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
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return grid
