"""`clipkit zero-shot`: classify a folder (CSV out), or evaluate a labelled folder / labelled shards."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.commands.embed import add_model_args
    from clipkit.cli.types import positive_int

    p = sub.add_parser(
        "zero-shot",
        help="zero-shot classify images with class-name prompts",
        description="Modes: --images DIR --labels 'cat,dog' writes predictions as CSV; "
        "--labelled-folder ROOT (ROOT/<class>/*.png) or --shards URL --label-field F "
        "evaluates and prints top-1 / top-5 / balanced accuracy / per-class recall.",
    )
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder or file list to classify (needs --labels)")
    src.add_argument("--labelled-folder", help="ROOT with one sub-folder of images per class")
    src.add_argument("--shards", help="labelled shards; the label is --label-field of each sample's json")
    p.add_argument("--labels", help="comma-separated class names (order = class index)")
    p.add_argument("--label-field", default=None, help="json field holding the label (with --shards)")
    p.add_argument(
        "--templates", default=None, help="openai | simple | none | FILE of '{}' or '{c}' templates [simple]"
    )
    p.add_argument("--out", default=None, help="CSV of predictions (path, label, probability)")
    p.add_argument("--confusion", default=None, help="confusion-matrix PNG (evaluation modes)")
    p.add_argument("--json", default=None, help="write the evaluation report as JSON")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out / --confusion / --json files that clipkit did not write"
    )
    p.set_defaults(func=run)


PREDICTIONS = "clipkit-zero-shot-predictions"
CONFUSION = "clipkit-confusion-matrix"
REPORT = "clipkit-zero-shot-report"


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


def _outputs(args) -> list[tuple[str, str]]:
    """(path, format) of every file this run writes, claimed before any work (clipkit.io.check_output_path)."""
    from clipkit.io import check_output_path

    outputs = [(args.out or "predictions.csv", PREDICTIONS)] if args.images else []
    outputs += [(path, fmt) for path, fmt in ((args.confusion, CONFUSION), (args.json, REPORT)) if path]
    inputs = [args.images, args.labelled_folder, args.shards, args.templates]
    for path, fmt in outputs:
        check_output_path(path, fmt, inputs, args.overwrite, kind="file")
    return outputs


def _embed_folder(clf, paths: list[str], batch_size: int, source: str):
    """(N, D) embeddings of the paths that decode, their indices; the rest skipped, counted and reported."""
    from collections import Counter

    import numpy as np

    from clipkit.data.folders import image_batches, skipped_note

    skipped: Counter = Counter()
    kept: list[int] = []
    chunks: list[np.ndarray] = []
    for indices, _, images in image_batches(paths, batch_size, skipped):
        kept.extend(indices)
        chunks.append(clf.embed(images))
    if skipped:
        print(f"{source}: {skipped_note(skipped)}")
    if not kept:
        raise ValueError(f"no image in {source!r} could be read ({skipped_note(skipped)}); check the folder")
    return np.concatenate(chunks), kept


def run(args) -> int:
    import csv

    from clipkit.cli.commands.embed import load_model
    from clipkit.io import output_file, register_file
    from clipkit.retrieval.zeroshot import ZeroShotClassifier, format_report, save_confusion_png

    labels = _labels(args.labels)
    if args.images and labels is None:
        raise ValueError("--images needs --labels 'class1,class2,...'")
    if not args.images and not args.labelled_folder and not args.label_field:
        raise ValueError("--shards needs --label-field (the json field that holds the class)")
    outputs = dict((fmt, path) for path, fmt in _outputs(args))  # refused before the model is loaded
    model = load_model(args)
    if args.images:
        from clipkit.data.folders import list_images

        paths = list_images(args.images)
        assert labels is not None, "--images without --labels is refused above"
        clf = ZeroShotClassifier(model, labels, args.templates, batch_size=args.batch_size)
        embeddings, kept = _embed_folder(clf, paths, args.batch_size, args.images)
        proba = clf.predict_proba(embeddings)
        out = outputs[PREDICTIONS]
        with output_file(out, PREDICTIONS, overwrite=args.overwrite, mode="w") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "probability", *[f"p_{c}" for c in labels]])
            for i, row in zip(kept, proba):
                writer.writerow([paths[i], labels[int(row.argmax())], f"{row.max():.4f}", *[f"{x:.4f}" for x in row]])
        print(f"classified {len(kept)} images into {labels}; predictions in {out}")
        return 0
    if args.labelled_folder:
        from clipkit.data.folders import labelled_folder

        paths, y, classes = labelled_folder(args.labelled_folder, labels)
        clf = ZeroShotClassifier(model, classes, args.templates, batch_size=args.batch_size)
        images, kept = _embed_folder(clf, paths, args.batch_size, args.labelled_folder)
        y = [y[i] for i in kept]
    else:
        images, names = labelled_shards(args.shards, args.label_field)
        classes = labels or sorted(set(names))
        known = [i for i, name in enumerate(names) if name in set(classes)]
        if not known:
            raise ValueError(
                f"no sample's {args.label_field!r} is one of --labels {classes[:5]} (the samples have "
                f"e.g. {sorted(set(names))[:5]}); give the classes the samples use"
            )
        if len(known) < len(names):  # samples of other classes are left out and counted, as eval does
            print(
                f"left out {len(names) - len(known)} of {len(names)} samples whose {args.label_field!r} is not "
                f"one of --labels"
            )
            images, names = [images[i] for i in known], [names[i] for i in known]
        y = names
        clf = ZeroShotClassifier(model, classes, args.templates, batch_size=args.batch_size)
    report = clf.evaluate(images, y)
    print(format_report(report, title=f"zero-shot on {args.labelled_folder or args.shards} ({len(classes)} classes)"))
    if CONFUSION in outputs:
        import numpy as np

        save_confusion_png(
            np.asarray(report["confusion"]), classes, outputs[CONFUSION], title=f"zero-shot top-1 {report['top1']:.3f}"
        )
        register_file(outputs[CONFUSION], CONFUSION)
    if REPORT in outputs:
        import json

        with output_file(outputs[REPORT], REPORT, overwrite=args.overwrite, mode="w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0
