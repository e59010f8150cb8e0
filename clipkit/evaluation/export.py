"""Write datasets in CLIP_benchmark's webdataset layout (what `clip_benchmark eval --dataset wds/NAME` reads).

    export_labelled_folder("photos/", "bench/photos")                     # photos/<class>/*.jpg
    export_clip_benchmark([(pil_image, 3, ["a caption"]), ...], "bench/mine",
                          classnames=["cat", "dog", "bird", "fish"], templates=["a photo of a {c}."])

The layout is described in clipkit.evaluation.datasets. A split is written as
a whole into a temporary folder and renamed into place (a crash never leaves a
half-written split); the metadata files are each written atomically. Image
files are copied byte for byte when their format is one CLIP_benchmark decodes
(webp, png, jpg), PIL images are stored as PNG (lossless). Keys are
CLIP_benchmark's own ("s0000000", ...).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from clipkit.data.folders import labelled_folder, read_caption, read_images, skipped_note
from clipkit.evaluation.datasets import (
    CLASSNAMES_FILE,
    DATASET_TYPES,
    TEMPLATES_FILE,
    TYPE_FILE,
    Sample,
    TemplateSpec,
    template_text,
)
from clipkit.images import open_image, to_rgb
from clipkit.io import atomic_directory, atomic_file, claim_output, output_lock
from clipkit.retrieval.zeroshot import DEFAULT_TEMPLATES, get_templates

BENCHMARK_FORMAT = "clipkit-benchmark"  # the .clipkit-output.json marker of a folder export_* wrote

_COPY_EXTENSIONS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


def _image_member(image) -> tuple[str, bytes]:
    """(extension, bytes) of a path (copied when CLIP_benchmark decodes its format) or a PIL image (PNG)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        ext = _COPY_EXTENSIONS.get(path.suffix.lower())
        if ext is not None:
            return ext, path.read_bytes()
        image = open_image(path)  # bombs and junk: one line naming the file
    if not isinstance(image, Image.Image):
        raise TypeError(f"image is {type(image).__name__}; expected a path or a PIL image")
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="PNG")
    return "png", buf.getvalue()


def _as_sample(item, index: int) -> Sample:
    if isinstance(item, Sample):
        return item
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TypeError(
            f"samples[{index}] is {type(item).__name__}; expected (image, label) or "
            f"(image, label, captions) or a Sample"
        )
    image, label, captions = (*item, None) if len(item) == 2 else item
    if isinstance(captions, str):
        captions = [captions]
    return Sample(image, label, captions)


def export_clip_benchmark(
    samples: Iterable,
    out_dir: str | os.PathLike,
    classnames: list[str] | None = None,
    templates: TemplateSpec | None = None,
    split: str = "test",
    dataset_type: str = "classification",
    shard_size: int = 10_000,
    progress: bool = False,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
) -> dict:
    """Write (image, label[, captions]) samples as split `split` of a CLIP_benchmark dataset in `out_dir`.

    Classification data needs a class index per sample (and `classnames`,
    `templates` for zero-shot); retrieval data needs captions (`cls` is kept
    when given, so one dataset can serve both in clipkit). Returns
    {"path", "split", "count", "shards"}. `out_dir` must be new, empty or a
    folder this function wrote (clipkit.io.claim_output); anything else is
    refused unless `overwrite`, and so is a folder that is, is inside or
    contains one of `inputs` (checked before any sample is read).
    """
    from tqdm.auto import tqdm

    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type={dataset_type!r} is not one of {DATASET_TYPES}")
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}; expected >= 1")
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"split={split!r}; expected a folder name such as 'test' or 'train'")
    if classnames is not None:
        classnames = [str(c) for c in classnames]
        bad = [c for c in classnames if not c.strip() or "\n" in c]
        if bad:
            raise ValueError(f"class names {bad!r} are empty or span lines; classnames.txt holds one a line")
    lines = [template_text(t) for t in get_templates(templates)] if templates is not None else None
    out_dir = claim_output(out_dir, BENCHMARK_FORMAT, inputs, overwrite)
    with output_lock(out_dir):  # one export into a folder at a time
        count, shards = 0, 0
        bar = tqdm(disable=not progress, unit="samples", desc=f"export {out_dir.name}/{split}")
        with atomic_directory(out_dir / split) as tmp:
            tar: tarfile.TarFile | None = None
            raw: io.BufferedWriter | None = None
            for index, item in enumerate(samples):
                sample = _as_sample(item, index)
                members = {}
                if sample.label is not None:
                    label = int(sample.label)
                    if label < 0 or (classnames is not None and label >= len(classnames)):
                        raise ValueError(
                            f"samples[{index}] has label {label}; expected a class index in "
                            f"[0, {len(classnames) if classnames else 'n'})"
                        )
                    members["cls"] = str(label).encode()
                elif dataset_type == "classification":
                    raise ValueError(f"samples[{index}] has no label; a classification dataset needs one per sample")
                if sample.captions:
                    members["txt"] = "\n".join(c.replace("\n", " ").strip() for c in sample.captions).encode("utf-8")
                elif dataset_type == "retrieval":
                    raise ValueError(f"samples[{index}] has no caption; a retrieval dataset needs at least one")
                ext, payload = _image_member(sample.image)
                if count % shard_size == 0:
                    if tar is not None and raw is not None:
                        tar.close()
                        raw.close()
                    raw = open(tmp / f"{shards}.tar", "wb")
                    tar = tarfile.open(fileobj=raw, mode="w")
                    shards += 1
                assert tar is not None  # the first sample opened a shard
                key = f"s{count:07d}"
                for member_ext, data in ((ext, payload), *members.items()):
                    info = tarfile.TarInfo(f"{key}.{member_ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
                count += 1
                bar.update(1)
            if tar is not None and raw is not None:
                tar.close()
                raw.close()
            if count == 0:
                raise ValueError(f"no samples to export into {str(out_dir)!r}")
            (tmp / "nshards.txt").write_text(f"{shards}\n")
        bar.close()
        for name, content in ((CLASSNAMES_FILE, classnames), (TEMPLATES_FILE, lines), (TYPE_FILE, [dataset_type])):
            if content is not None:
                with atomic_file(out_dir / name, "w") as f:
                    f.write("".join(f"{line}\n" for line in content))
        return {"path": str(out_dir), "split": split, "count": count, "shards": shards}


def export_labelled_folder(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    templates: TemplateSpec | None = None,
    split: str = "test",
    classnames: list[str] | None = None,
    captions: bool = True,
    shard_size: int = 10_000,
    progress: bool = False,
    *,
    overwrite: bool = False,
) -> dict:
    """ROOT/<class>/* (captions from `<stem>.txt` beside images when `captions`) -> CLIP_benchmark's layout.

    `classnames` gives the class order (every sub-folder must be one of them);
    by default the sorted sub-folder names. `templates`: 'openai' (CLIP's 80
    ImageNet ones), 'simple' (the default), a file, or a list of "{c}" / "{}" templates.
    An image that does not decode (or a decompression bomb) is skipped and
    counted (the folder policy, clipkit.data.folders); the summary's "skipped" says how many.
    """
    paths, labels, classes = labelled_folder(root, classnames)
    skipped: Counter[str] = Counter()

    def samples():
        for i, path, _ in read_images(paths, skipped):  # decoded once to refuse junk; bytes copied as they are
            caption = read_caption(path) if captions else None
            yield Sample(path, labels[i], [caption] if caption else None)

    summary = export_clip_benchmark(
        samples(),
        out_dir,
        classes,
        DEFAULT_TEMPLATES if templates is None else templates,
        split,
        "classification",
        shard_size,
        progress,
        overwrite=overwrite,
        inputs=[root],
    )
    summary["skipped"] = dict(skipped)
    if skipped:
        summary["skipped_note"] = skipped_note(skipped)
    return summary
