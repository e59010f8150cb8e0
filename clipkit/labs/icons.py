"""A real image-caption set for development: a Debian icon theme rendered onto coloured backgrounds.

    from clipkit.labs.icons import make_icon_set
    stats = make_icon_set("papirus", "data/icons", size=64, renders_per_icon=12, limit=1400)
    # data/icons/{train,val,unseen}/00000.tar (+ _stats.json), pictures.json, manifest.json

    clipkit icons --theme papirus --out data/icons --limit 1400      # the same, from the shell

Why: the shapes world was designed with its recipes; nothing told a user what to
expect on pictures nobody designed for us. An icon theme is thousands of designed
pictures (apps, places, devices, mime types ...) named by what they show, installed
from Debian's packages (`apt-get install papirus-icon-theme`), so it works offline.
Emoji fonts are deliberately not used: a pictogram set is kept aside to check this
work independently.

What is a picture: one distinct SVG (symlinked aliases and byte-identical copies
count once, named by the file rather than an alias), in the size folder closest to
(at or above) the render size. Its
caption is its name made readable (`name_caption`: "folder-music" -> "folder music",
"-symbolic" dropped, "org.gnome.Nautilus" -> "nautilus", "AdobePhotoshop" -> "adobe
photoshop", 25+-letter ids dropped); two pictures with one caption keep the first (categories in sorted
order), so caption and picture are one to one. Its category (apps, places, ...) is
the theme folder it lives in. Each picture is rendered `renders_per_icon` times at
`size` px: a background colour from BACKGROUNDS, the icon scaled to one of
ICON_SCALES of the canvas and shifted by a few pixels; every draw is seeded by
(seed, picture), so a picture renders the same whatever `limit` selects around it.

Splits (disjoint by name): `unseen` holds every render of `unseen_fraction` of the
names (never in train: "unseen names"); of every other name, `val_renders` renders
go to `val` (other backgrounds / placements of seen pictures) and the rest to
`train`. Each split is a folder of img2dataset-style shards written by
clipkit.data.shards.write_shards: `{key}.png`, `{key}.txt` (the caption) and
`{key}.json` (name, caption, category, background, scale, offset, picture, source,
theme, split), keys `PPPPPRRR` (picture id, render). The whole output is staged
and published by clipkit.io (a manifest names every part).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipkit.data.shards import write_shards
from clipkit.io import staged_output, write_json, write_manifest

FORMAT = "clipkit-icons"
SPLITS = ("train", "val", "unseen")
ICON_DIRS = ("/usr/share/icons", "~/.local/share/icons", "~/.icons")
PACKAGES = {"papirus": "papirus-icon-theme", "adwaita": "adwaita-icon-theme", "breeze": "breeze-icon-theme"}
EXCLUDED_CATEGORIES = ("emotes", "panel")  # emoji-like faces (a pictogram set is kept for checks); tray glyphs
NAME_SUFFIXES = ("-symbolic",)
BACKGROUNDS = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (24, 24, 24),
    "red": (200, 45, 45),
    "blue": (40, 80, 200),
    "green": (40, 150, 70),
    "yellow": (235, 200, 40),
    "purple": (130, 60, 170),
}
ICON_SCALES = (0.625, 0.6875, 0.75, 0.8125, 0.875)  # icon side as a fraction of the canvas
MAX_SHIFT = 0.0625  # largest offset from the centre, fraction of the canvas
_REVERSE_DNS = {
    "org",
    "com",
    "io",
    "net",
    "de",
    "ch",
    "fr",
    "uk",
    "me",
    "dev",
    "app",
    "eu",
    "info",
    "ru",
    "nl",
    "it",
    "cz",
    "pl",
    "be",
    "at",
    "se",
    "fi",
    "page",
    "xyz",
    "us",
    "ca",
    "tk",
    "im",
    "sh",
    "cc",
}
_SIZE_DIR = re.compile(r"^(\d+)x\1$")
_WINE = re.compile(r"^[0-9A-F]{4}_(.+?)(\.\d+)?$")


# ----------------------------------------------------------------------------- names


def name_caption(name: str) -> str:
    """A readable caption from an icon name ("folder-music" -> "folder music"; see the module docstring)."""
    for suffix in NAME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    wine = _WINE.match(name)
    if wine:  # wine's extracted icons: "1E64_notepad.0" -> "notepad"
        name = wine.group(1)
    parts = name.split(".")
    if len(parts) >= 3 and parts[0].lower() in _REVERSE_DNS:
        name = parts[-1]  # reverse-DNS app ids: "org.gnome.Nautilus" -> "Nautilus"
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # camelCase words
    # Words of 25+ letters are ids, not words (browser web-app icons carry 32-letter extension ids).
    return " ".join(w for w in re.split(r"[-_.+\s]+", name.lower()) if w and len(w) <= 24)


def resolve_theme(theme: str | os.PathLike) -> Path:
    """A theme folder from a name ("papirus": /usr/share/icons/Papirus) or a path; one clear line if absent."""
    path = Path(os.path.expanduser(str(theme)))
    if path.is_dir():
        return path
    if os.sep not in str(theme):
        for root in ICON_DIRS:
            base = Path(os.path.expanduser(root))
            if base.is_dir():
                for child in sorted(base.iterdir()):
                    if child.name.lower() == str(theme).lower() and child.is_dir():
                        return child
    package = PACKAGES.get(str(theme).lower(), f"{str(theme).lower()}-icon-theme")
    raise FileNotFoundError(
        f"icon theme {str(theme)!r} is not installed (looked in {', '.join(ICON_DIRS)}); "
        f"install it with `apt-get install {package}`, or pass the theme's folder"
    )


@dataclass(frozen=True)
class Picture:
    id: int
    caption: str
    name: str  # the icon's file name without .svg
    category: str
    source: str  # path relative to the theme folder
    split: str = "train"


def find_pictures(
    theme_dir: str | os.PathLike, size: int = 64, categories=None, exclude: tuple = EXCLUDED_CATEGORIES
) -> list[dict]:
    """Distinct pictures of a theme: [{"caption", "name", "category", "source", "path"}], sorted by caption.

    Looks at THEME/<N>x<N>/<category>/*.svg, THEME/scalable/<category>/*.svg and THEME/symbolic/<category>/*.svg
    (also the <category>/<size> layout of Breeze)."""
    theme_dir = Path(theme_dir)
    variants: dict[tuple, list] = {}  # (category, name) -> [(nominal size, path)]
    for svg in sorted(theme_dir.rglob("*.svg")):
        rel = svg.relative_to(theme_dir).parts
        if len(rel) != 3 or "@" in rel[0] or "@" in rel[1]:
            continue
        first, second, file = rel
        for size_dir, category in ((first, second), (second, first)):  # noqa: B007 (category is read after the break)
            match = _SIZE_DIR.match(size_dir)
            if match or size_dir in ("scalable", "symbolic"):
                nominal = int(match.group(1)) if match else 10_000
                break
        else:
            continue
        if (categories and category not in categories) or category in exclude or not svg.is_file():
            continue
        variants.setdefault((category, file[:-4]), []).append((nominal, svg))
    chosen = {}
    for key, options in variants.items():
        above = [o for o in options if o[0] >= size]
        chosen[key] = min(above)[1] if above else max(options)[1]  # smallest at or above `size`, else largest
    pictures, seen_bytes, seen_captions = [], set(), set()
    # Real files before symlinks: a picture is named by its file, not by an alias pointing at it.
    for (category, name), path in sorted(chosen.items(), key=lambda kv: (kv[1].is_symlink(), kv[0])):
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        caption = name_caption(name)
        if digest in seen_bytes or caption in seen_captions or not re.search("[a-z]", caption):
            continue
        seen_bytes.add(digest)
        seen_captions.add(caption)
        pictures.append(
            {
                "caption": caption,
                "name": name,
                "category": category,
                "path": path,
                "source": str(path.relative_to(theme_dir)),
            }
        )
    return sorted(pictures, key=lambda p: p["caption"])


def assign_splits(captions: list[str], unseen_fraction: float, seed: int) -> list[str]:
    """'unseen' for round(unseen_fraction * n) captions (at least 1 when the fraction > 0 and n >= 2), else 'train'."""
    n = len(captions)
    k = int(round(unseen_fraction * n))
    if unseen_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    order = sorted(range(n), key=lambda i: np.random.default_rng([seed, zlib.crc32(captions[i].encode())]).random())
    unseen = set(order[:k])
    return ["unseen" if i in unseen else "train" for i in range(n)]


# ----------------------------------------------------------------------------- rendering


def _rasterise(path: Path, side: int) -> Image.Image:
    try:
        import cairosvg  # a heavy dependency (the cairo library), needed only by this maker
    except ImportError as e:
        raise ImportError(f"rendering SVG icons needs cairosvg ({e}); `pip install cairosvg`") from e
    except OSError as e:  # cairocffi could not load libcairo
        raise OSError(f"cairosvg needs the cairo library ({e}); install it with `apt-get install libcairo2`") from e
    png = cairosvg.svg2png(bytestring=path.read_bytes(), output_width=side, output_height=side)
    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGBA")


@dataclass
class IconRender:
    """One render, in the shape clipkit.data.shards.write_shards writes."""

    key: str
    image: Image.Image
    caption: str
    meta: dict

    def metadata(self) -> dict:
        return {
            "key": self.key,
            "caption": self.caption,
            "width": self.image.width,
            "height": self.image.height,
            "status": "success",
            **self.meta,
        }


def render_picture(picture: Picture, path: Path, size: int, renders: int, seed: int, theme: str) -> list[IconRender]:
    """`renders` renders of one picture: background, scale and offset drawn from a stream seeded by (seed, source)."""
    rng = np.random.default_rng([seed, zlib.crc32(picture.source.encode())])
    names = list(BACKGROUNDS)
    order = [names[i] for i in rng.permutation(len(names))]
    cache: dict[int, Image.Image] = {}
    out = []
    for r in range(renders):
        background = order[r % len(order)]
        scale = float(ICON_SCALES[rng.integers(len(ICON_SCALES))])
        side = int(round(scale * size))
        reach = min(int(MAX_SHIFT * size), (size - side) // 2)
        dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, size=2))
        if side not in cache:
            cache[side] = _rasterise(path, side)
        canvas = Image.new("RGBA", (size, size), BACKGROUNDS[background] + (255,))
        canvas.alpha_composite(cache[side], ((size - side) // 2 + dx, (size - side) // 2 + dy))
        meta = {
            "name": picture.caption,
            "icon": picture.name,
            "category": picture.category,
            "background": background,
            "scale": scale,
            "offset": [dx, dy],
            "picture": picture.id,
            "render": r,
            "source": picture.source,
            "theme": theme,
            "split": picture.split,
        }
        out.append(IconRender(f"{picture.id:05d}{r:03d}", canvas.convert("RGB"), picture.caption, meta))
    return out


# ----------------------------------------------------------------------------- the set


def make_icon_set(
    theme: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 64,
    renders_per_icon: int = 12,
    limit: int | None = None,
    unseen_fraction: float = 0.1,
    val_renders: int = 1,
    seed: int = 0,
    categories=None,
    shard_size: int = 5_000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Render a theme into OUT/{train,val,unseen}/ shards + pictures.json + manifest.json; returns the stats."""
    from tqdm.auto import tqdm

    if size < 16:
        raise ValueError(f"size={size}; expected >= 16 px")
    if not 0 <= unseen_fraction < 1:
        raise ValueError(f"unseen_fraction={unseen_fraction}; expected a fraction in [0, 1)")
    if renders_per_icon < 1 or not 0 <= val_renders < renders_per_icon:
        raise ValueError(
            f"renders_per_icon={renders_per_icon}, val_renders={val_renders}; expected "
            f"renders_per_icon >= 1 and 0 <= val_renders < renders_per_icon (train keeps the rest)"
        )
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}; expected >= 1 pictures or None for all")
    start = time.time()
    theme_dir = resolve_theme(theme)
    found = find_pictures(theme_dir, size, categories)
    if not found:
        raise ValueError(
            f"no SVG icons found in {str(theme_dir)!r} (expected <N>x<N>/<category>/*.svg, "
            f"scalable/<category>/*.svg or symbolic/<category>/*.svg)"
        )
    total_found = len(found)
    if limit is not None and limit < len(found):
        keep = sorted(np.random.default_rng(seed).permutation(len(found))[:limit].tolist())
        found = [found[i] for i in keep]
    splits = assign_splits([p["caption"] for p in found], unseen_fraction, seed)
    pictures = [
        Picture(i, p["caption"], p["name"], p["category"], p["source"], s)
        for i, (p, s) in enumerate(zip(found, splits))
    ]
    paths = [p["path"] for p in found]

    def split_renders(split: str, bar):
        # One pass per split keeps memory flat; a picture's draws do not depend on the pass (seeded by picture).
        for picture, path in zip(pictures, paths):
            if (picture.split == "unseen") != (split == "unseen"):
                continue
            count = val_renders if split == "val" else renders_per_icon
            for r in render_picture(picture, path, size, count, seed, theme_dir.name):
                if split == "train" and r.meta["render"] < val_renders:
                    continue
                r.meta["split"] = split
                bar.update(1)
                yield r

    with (
        staged_output(out, FORMAT, inputs=[theme_dir], overwrite=overwrite) as stage,
        tqdm(
            total=len(pictures) * renders_per_icon, desc=f"render {theme_dir.name}", unit="img", disable=not progress
        ) as bar,
    ):
        parts: dict[str, int | None] = {}
        counts: dict[str, int] = {}
        for split in SPLITS:
            written = write_shards(split_renders(split, bar), stage.dir / split, shard_size=shard_size)
            counts[split] = written["count"]
            for tar in written["shards"]:
                rel = f"{split}/{Path(tar).name}"
                parts[rel] = None
                parts[rel.replace(".tar", "_stats.json")] = None
        write_json(stage.dir / "pictures.json", [{**p.__dict__} for p in pictures])
        parts["pictures.json"] = len(pictures)
        stats = {
            "theme": theme_dir.name,
            "theme_dir": str(theme_dir),
            "size": size,
            "seed": seed,
            "renders_per_icon": renders_per_icon,
            "val_renders": val_renders,
            "unseen_fraction": unseen_fraction,
            "pictures_found": total_found,
            "pictures": len(pictures),
            "renders": sum(counts.values()),
            "counts": counts,
            "names": {s: sum(p.split == s for p in pictures) for s in ("train", "unseen")},
            "categories": {c: sum(p.category == c for p in pictures) for c in sorted({p.category for p in pictures})},
            "seconds": round(time.time() - start, 1),
        }
        write_manifest(stage.dir, FORMAT, parts, **stats)
    return stats
