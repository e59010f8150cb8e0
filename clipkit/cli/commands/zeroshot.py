"""`clipkit zero-shot`: classify a folder (CSV out), or evaluate a labelled folder / labelled shards."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_int
    from clipkit.cli.commands.embed import add_model_args

    p = sub.add_parser("zero-shot", help="zero-shot classify images with class-name prompts",
                       description="Modes: --images DIR --labels 'cat,dog' writes predictions as CSV; "
                                   "--labelled-folder ROOT (ROOT/<class>/*.png) or --shards URL --label-field F "
                                   "evaluates and prints top-1 / top-5 / balanced accuracy / per-class recall.")
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder or file list to classify (needs --labels)")
    src.add_argument("--labelled-folder", help="ROOT with one sub-folder of images per class")
    src.add_argument("--shards", help="labelled shards; the label is --label-field of each sample's json")
    p.add_argument("--labels", help="comma-separated class names (order = class index)")
    p.add_argument("--label-field", default=None, help="json field holding the label (with --shards)")
    p.add_argument("--templates", default="simple", help="openai | simple | none | FILE [simple]")
    p.add_argument("--out", default=None, help="CSV of predictions (path, label, probability)")
    p.add_argument("--confusion", default=None, help="confusion-matrix PNG (evaluation modes)")
    p.add_argument("--json", default=None, help="write the evaluation report as JSON")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.set_defaults(func=run)


def _labels(arg: str | None) -> list[str] | None:
    if arg is None:
        return None
    labels = [x.strip() for x in arg.split(",") if x.strip()]
    if len(labels) < 2:
        raise ValueError(f"--labels {arg!r}: expected at least two comma-separated class names")
    return labels


def labelled_shards(urls: str, field: str, classes: list[str] | None = None):
    """(PIL images, label strings) from shards whose json carries `field`; samples without it are skipped."""
    from clipkit.data.shards import read_samples

    images, labels, missing = [], [], 0
    for image, meta in read_samples(urls, ("image", "json")):
        value = (meta or {}).get(field)
        if value is None:
            missing += 1
            continue
        images.append(image)
        labels.append(str(value))
    if not images:
        raise ValueError(f"no sample in {urls!r} has a json field {field!r}")
    if missing:
        print(f"skipped {missing} samples without json field {field!r}")
    return images, labels


def run(args) -> int:
    import csv
    from pathlib import Path

    from clipkit.io import atomic_file, write_json

    from clipkit.cli.commands.embed import load_model
    from clipkit.zeroshot import ZeroShotClassifier, format_report

    labels = _labels(args.labels)
    model = load_model(args)
    if args.images:
        from clipkit.data.folders import list_images

        if labels is None:
            raise ValueError("--images needs --labels 'class1,class2,...'")
        paths = list_images(args.images)
        clf = ZeroShotClassifier(model, labels, args.templates, batch_size=args.batch_size)
        proba = clf.predict_proba(paths)
        out = Path(args.out or "predictions.csv")
        with atomic_file(out, "w") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "probability", *[f"p_{c}" for c in labels]])
            for path, row in zip(paths, proba):
                writer.writerow([path, labels[int(row.argmax())], f"{row.max():.4f}", *[f"{x:.4f}" for x in row]])
        print(f"classified {len(paths)} images into {labels}; predictions in {out}")
        return 0
    if args.labelled_folder:
        from clipkit.data.folders import labelled_folder

        images, y, classes = labelled_folder(args.labelled_folder, labels)
    else:
        if not args.label_field:
            raise ValueError("--shards needs --label-field (the json field that holds the class)")
        images, names = labelled_shards(args.shards, args.label_field)
        classes = labels or sorted(set(names))
        y = names
    clf = ZeroShotClassifier(model, classes, args.templates, batch_size=args.batch_size)
    report = clf.evaluate(images, y, confusion_png=args.confusion)
    print(format_report(report, title=f"zero-shot on {args.labelled_folder or args.shards} ({len(classes)} classes)"))
    if args.json:
        write_json(args.json, report)
    return 0
