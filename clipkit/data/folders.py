"""Image folders, file lists and labelled folders.

    list_images("photos/")                  # every image under a folder, sorted, recursively
    list_images("files.txt")                # a file list: one path per line (relative to the list)
    list_images(["a.png", "b.jpg"])         # already a list: checked and returned
    paths, labels, classes = labelled_folder("root")   # root/<class>/*.png -> class indices
    read_caption("photos/cat.jpg")          # photos/cat.txt if it exists (clip-retrieval's convention)

    skipped = Counter()
    for i, path, image in read_images(paths, skipped): ...        # decoded RGB images; junk skipped, counted
    for indices, paths_kept, images in image_batches(paths, 256, skipped): ...
    print(skipped_note(skipped))                                  # "skipped 3 unusable images (bad_image: 2, ...)"

The folder policy is the shards' policy: a file that does not decode, an empty
image or a decompression bomb (clipkit.images.open_image) is skipped and counted
by reason in `skipped`, and the run goes on; every command that reads a folder
(embed --images, eval, zero-shot --images / --labelled-folder, export-benchmark)
reads it through `read_images` and reports the count.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from clipkit.images import MAX_IMAGE_PIXELS, open_image
from clipkit.io.errors import BadImageError, positive_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(source: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = True) -> list[str]:
    """Image paths from a folder (sorted), a text file list, or a sequence of paths.

    Raises FileNotFoundError for a missing folder / list / listed file and
    ValueError when a folder holds no images.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                str(p)
                for p in path.glob(pattern)
                if p.is_file()
                and is_image_path(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {str(path)!r}")
            return found
        if path.is_file() and not is_image_path(path):
            return _read_file_list(path)
        if path.is_file():
            return [str(path)]
        raise FileNotFoundError(f"{str(path)!r} is neither an image folder, a file list nor an image")
    paths = [str(p) for p in source]
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            raise FileNotFoundError(f"images[{i}]: no such file {p!r}")
    return paths


def _read_file_list(path: Path) -> list[str]:
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line)
        if not item.is_absolute():
            item = path.parent / item
        if not item.is_file():
            raise FileNotFoundError(f"{path}:{lineno}: listed image {line!r} does not exist (looked for {str(item)!r})")
        out.append(str(item))
    if not out:
        raise ValueError(f"file list {str(path)!r} names no images")
    return out


def read_caption(image_path: str | os.PathLike) -> str | None:
    """The caption stored next to an image as `<stem>.txt`, or None."""
    txt = Path(image_path).with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip()
    return None


def labelled_folder(
    root: str | os.PathLike, classes: list[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """A folder of class folders (root/<class>/*.png) -> (paths, label indices, class names).

    Class names are the sub-folder names in sorted order unless `classes`
    gives the order (then every sub-folder must be one of them).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labelled folder {str(root)!r} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{str(root)!r} has no class sub-folders; expected root/<class>/*.png")
    if classes is None:
        classes = folders
    else:
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise ValueError(f"sub-folders {unknown} of {str(root)!r} are not among the classes {list(classes)}")
    paths, labels = [], []
    for name in folders:
        images = sorted(str(p) for p in (root / name).rglob("*") if p.is_file() and is_image_path(p))
        paths.extend(images)
        labels.extend([list(classes).index(name)] * len(images))
    if not paths:
        raise ValueError(f"no images found in the class folders of {str(root)!r}")
    return paths, labels, list(classes)


def read_images(
    paths: Iterable[str | os.PathLike], skipped: Counter | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> Iterator[tuple[int, str, Image.Image]]:
    """(index, path, RGB image) for each path that decodes; the others are counted in `skipped` by reason
    and skipped: "bad_image" (does not decode, or 0 pixels: the shards' name), "too_large" (over
    `max_pixels`: a decompression bomb), "missing" (deleted meanwhile). Nothing stops the iteration but a bug."""
    skipped = Counter() if skipped is None else skipped
    for i, path in enumerate(paths):
        try:
            image = open_image(path, max_pixels=max_pixels)
        except BadImageError as e:
            skipped["too_large" if e.reason == "too_large" else "bad_image"] += 1
            continue
        except FileNotFoundError:  # deleted while we read the folder
            skipped["missing"] += 1
            continue
        yield i, str(path), image


def image_batches(
    paths: Iterable[str | os.PathLike],
    batch_size: int,
    skipped: Counter | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> Iterator[tuple[list[int], list[str], list]]:
    """read_images in batches of `batch_size` decoded images: (indices, paths, images) each."""
    batch_size = positive_int(batch_size, "batch_size")
    batch: tuple[list, list, list] = ([], [], [])
    for item in read_images(paths, skipped, max_pixels):
        for column, value in zip(batch, item):
            column.append(value)
        if len(batch[0]) == batch_size:
            yield batch
            batch = ([], [], [])
    if batch[0]:
        yield batch


def skipped_note(skipped: Counter, what: str = "images") -> str:
    """'' when nothing was skipped, else 'skipped 3 unusable images (bad_image: 2, too_large: 1)'."""
    total = sum(skipped.values())
    if not total:
        return ""
    return f"skipped {total} unusable {what} ({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})"
