"""Evaluation datasets in three layouts, read as one stream of (image, label, captions) samples.

    ds = open_dataset("benchmarks/cifar10")            # CLIP_benchmark's webdataset layout (see below)
    ds = open_dataset("photos/")                       # a labelled folder: photos/<class>/*.jpg
    ds = open_dataset("data/val/{00000..00003}.tar")   # image-caption shards (img2dataset layout)
    ds = open_dataset("data/val", label_field="shape") #   ... with a class from each sample's json
    ds.name, ds.layout, ds.classnames, ds.templates, ds.default_task
    for sample in ds.samples(): sample.image, sample.label, sample.captions

CLIP_benchmark's layout (what `clip_benchmark eval --dataset wds/NAME --dataset_root DIR` reads):

    DIR/classnames.txt                          one class name a line (line i = class i)
    DIR/zeroshot_classification_templates.txt   one template a line, the class name goes in "{c}"
    DIR/dataset_type.txt                        "classification" (the default when absent) or "retrieval"
    DIR/test/nshards.txt                        number of shards n
    DIR/test/0.tar ... DIR/test/{n-1}.tar       samples: an image (webp/png/jpg) + `cls` (class index
                                                as text) and/or `txt` (captions, one a line)
    DIR/train/...                               optional second split (the linear probe trains on it)

A labelled folder has one sub-folder per class; captions for retrieval are read
from `<image stem>.txt` beside each image (clip-retrieval's convention); the
folder may carry its own classnames.txt / zeroshot_classification_templates.txt.
Image-caption shards are clipkit's / img2dataset's (`{key}.png` + `{key}.txt`
+ `{key}.json`); their classes, when asked for, come from a json field.

A sample that cannot be used (no image, an image that does not decode, no label
or caption where the task needs one) is skipped and counted in `ds.skipped`;
it never stops an evaluation.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from clipkit.data.folders import labelled_folder, read_caption, read_images
from clipkit.data.shards import IMAGE_EXTENSIONS, expand_urls
from clipkit.images import open_image
from clipkit.io.errors import BadImageError
from clipkit.retrieval.zeroshot import DEFAULT_TEMPLATES, BenchmarkTemplate, get_templates

LAYOUTS = ("clip_benchmark", "labelled_folder", "caption_shards")
DATASET_TYPES = ("classification", "retrieval")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
TYPE_FILE = "dataset_type.txt"


# What `templates=` takes: 'openai', 'simple', 'none', a file, or a list of templates (strings or callables).
TemplateSpec = str | os.PathLike | Sequence[str | Callable[[str], str]]


def template_text(template) -> str:
    """A template as a line of CLIP_benchmark's templates file ("... {c} ...")."""
    if isinstance(template, BenchmarkTemplate):
        return template.text
    if isinstance(template, str):
        return template.replace("{}", "{c}")
    text = template("{c}")  # open_clip's lambdas just format the name
    if not isinstance(text, str) or "{c}" not in text:
        raise ValueError(f"template {template!r} cannot be written as text (it does not format '{{c}}' through)")
    return text


@dataclass
class Sample:
    image: object  # RGB PIL image (decoded by the reader; unreadable files were skipped)
    label: int | str | None  # class index, or a label string (caption shards' json field)
    captions: list[str] | None


@dataclass
class EvalDataset:
    """A dataset descriptor; `samples()` reads it (again) from disk."""

    name: str
    path: str
    layout: str
    split: str = "test"
    dataset_type: str = "classification"
    classnames: list[str] | None = None
    templates: list | None = None
    urls: list[str] = field(default_factory=list)  # shard urls (webdataset layouts)
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, label) of a labelled folder
    label_field: str | None = None
    skipped: Counter = field(default_factory=Counter)

    @property
    def default_task(self) -> str:
        """What CLIP_benchmark would run: retrieval for retrieval data, else zero-shot classification."""
        if self.dataset_type == "retrieval" or (self.layout == "caption_shards" and self.label_field is None):
            return "retrieval"
        return "zeroshot"

    def train_split(self) -> EvalDataset | None:
        """The layout's own training split (CLIP_benchmark's DIR/train), or None."""
        if self.layout != "clip_benchmark" or not (Path(self.path) / "train" / "nshards.txt").is_file():
            return None
        return replace(self, split="train", urls=_benchmark_urls(Path(self.path), "train"), skipped=Counter())

    def samples(self) -> Iterator[Sample]:
        if self.layout == "labelled_folder":
            # the folder policy (clipkit.data.folders): an image that does not decode is skipped and counted
            for i, path, image in read_images((p for p, _ in self.files), self.skipped):
                caption = read_caption(path)
                yield Sample(image, self.files[i][1], [caption] if caption else None)
            return
        for raw in _raw_samples(self.urls, self.skipped):
            sample = self._decode(raw)
            if sample is not None:
                yield sample

    def _decode(self, raw: dict) -> Sample | None:
        ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
        if ext is None:
            self.skipped["no_image"] += 1
            return None
        try:
            image = open_image(raw[ext], what=f"sample {raw.get('__key__', '?')}")
        except BadImageError as e:
            self.skipped["too_large" if getattr(e, "reason", "") == "too_large" else "bad_image"] += 1
            return None
        captions = None
        if "txt" in raw:
            text = raw["txt"].decode("utf-8", errors="replace")
            # CLIP_benchmark's retrieval samples hold several captions, one a line; img2dataset's hold one.
            lines = text.splitlines() if self.layout == "clip_benchmark" else [text]
            captions = [c.strip() for c in lines if c.strip()] or None
        label: int | str | None = None
        if self.layout == "clip_benchmark" and "cls" in raw:
            try:
                label = int(raw["cls"].decode().strip())
            except ValueError:
                self.skipped["bad_label"] += 1
                return None
        elif self.label_field is not None:
            meta = _json(raw.get("json"))
            value = None if meta is None else meta.get(self.label_field)
            label = None if value is None else str(value)
        return Sample(image, label, captions)


def _json(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _raw_samples(urls: list[str], skipped: Counter):
    """Raw tar members grouped by key, every shard in order (no rank or worker splitting)."""
    import webdataset as wds

    def handler(exn: Exception) -> bool:
        skipped["bad_tar"] += 1
        return True

    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler))


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _benchmark_urls(root: Path, split: str) -> list[str]:
    nshards_file = root / split / "nshards.txt"
    if nshards_file.is_file():
        n = int(nshards_file.read_text().strip())
        urls = [str(root / split / f"{i}.tar") for i in range(n)]
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"{nshards_file} says {n} shards but {missing[:3]} are missing")
        return urls
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "nshards.txt").is_file())
    raise FileNotFoundError(
        f"{str(root)!r} has no split {split!r} ({split}/nshards.txt); splits present: {splits or 'none'}"
    )


def is_benchmark_dir(path: Path) -> bool:
    """A folder with a split in CLIP_benchmark's layout (SPLIT/nshards.txt) or a dataset_type.txt."""
    if not path.is_dir():
        return False
    return (path / TYPE_FILE).is_file() or any((p / "nshards.txt").is_file() for p in path.iterdir() if p.is_dir())


def open_dataset(
    path: str | os.PathLike,
    split: str = "test",
    label_field: str | None = None,
    classnames: list[str] | str | None = None,
    templates: TemplateSpec | None = None,
    name: str | None = None,
) -> EvalDataset:
    """Recognise the layout of `path` (see module docstring) and describe the dataset.

    `classnames` (a list or a file, one a line) and `templates` (see
    get_templates) override what the dataset carries; `label_field` names
    the json field holding the class of image-caption shards.
    """
    text = str(path)
    root = Path(text)
    if isinstance(classnames, (str, os.PathLike)):
        if not Path(classnames).is_file():
            raise FileNotFoundError(f"classnames file {str(classnames)!r} does not exist (one class name a line)")
        classnames = _read_lines(Path(classnames))
    if root.is_dir() and is_benchmark_dir(root):
        dtype = _read_lines(root / TYPE_FILE)[0].lower() if (root / TYPE_FILE).is_file() else "classification"
        if dtype not in DATASET_TYPES:
            raise ValueError(
                f"{root / TYPE_FILE} says {dtype!r}; clipkit reads {DATASET_TYPES} "
                f"(multilabel datasets are not supported)"
            )
        names = classnames or (_read_lines(root / CLASSNAMES_FILE) if (root / CLASSNAMES_FILE).is_file() else None)
        if templates is None and (root / TEMPLATES_FILE).is_file():
            templates = root / TEMPLATES_FILE
        return EvalDataset(
            name or root.name,
            str(root),
            "clip_benchmark",
            split,
            dtype,
            names,
            get_templates(templates) if templates is not None else None,
            urls=_benchmark_urls(root, split),
        )
    if root.is_dir() and sorted(root.glob("*.tar")):
        urls = [str(p) for p in sorted(root.glob("*.tar"))]
        return _caption_shards(name or root.name, text, urls, label_field, classnames, templates)
    if root.is_dir():
        if classnames is None and (root / CLASSNAMES_FILE).is_file():
            classnames = _read_lines(root / CLASSNAMES_FILE)
        paths, labels, classes = labelled_folder(root, classnames)
        if templates is None:
            templates = root / TEMPLATES_FILE if (root / TEMPLATES_FILE).is_file() else DEFAULT_TEMPLATES
        return EvalDataset(
            name or root.name,
            str(root),
            "labelled_folder",
            split,
            "classification",
            list(classes),
            get_templates(templates),
            files=list(zip(paths, labels)),
        )
    if ".tar" in text or "{" in text or "::" in text or "://" in text or text.startswith("pipe:"):
        urls = expand_urls(text)
        local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
        missing = [u for u in local if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) {missing[:3]} of {text!r} do not exist")
        stem = Path(local[0]).parent.name if local else "shards"
        return _caption_shards(name or stem, text, urls, label_field, classnames, templates)
    raise FileNotFoundError(
        f"dataset {text!r} does not exist; expected a folder in CLIP_benchmark's layout (classnames.txt, "
        f"test/nshards.txt, test/0.tar ...), a labelled folder ROOT/<class>/*.png, or image-caption shards "
        f"('data/{{00000..00009}}.tar' or a folder of .tar files)"
    )


def _caption_shards(name, path, urls, label_field, classnames, templates) -> EvalDataset:
    if label_field is None and (classnames is not None or templates is not None):
        raise ValueError(
            f"classnames / templates for image-caption shards {path!r} need label_field "
            f"(the json field holding each sample's class), e.g. label_field='shape'"
        )
    resolved = get_templates(templates if templates is not None else DEFAULT_TEMPLATES) if label_field else None
    return EvalDataset(
        name,
        path,
        "caption_shards",
        "test",
        "classification" if label_field else "retrieval",
        list(classnames) if classnames else None,
        resolved,
        urls=list(urls),
        label_field=label_field,
    )
