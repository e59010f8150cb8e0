"""`clipkit eval`: CLIP_benchmark's tasks (zero-shot, retrieval, linear probe) on any dataset; JSON rows out."""

from __future__ import annotations

import argparse

from clipkit.cli.types import finite_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.commands.embed import add_model_args

    p = sub.add_parser(
        "eval",
        help="zero-shot / retrieval / linear-probe evaluation (CLIP_benchmark's metrics and layout)",
        description="Evaluate a model on datasets in CLIP_benchmark's webdataset layout (DIR/classnames.txt, "
        "DIR/zeroshot_classification_templates.txt, DIR/test/{0..n-1}.tar), labelled folders "
        "(ROOT/<class>/*) or image-caption shards. Prints the metrics and appends one JSON row per "
        "(model, dataset, task) to --output, so runs concatenate into one table. "
        "`clipkit export-benchmark` writes a labelled folder in CLIP_benchmark's layout.",
    )
    add_model_args(p)
    p.add_argument(
        "--dataset", action="append", required=True, help="dataset folder or shard pattern (repeat for several)"
    )
    p.add_argument(
        "--task",
        default="auto",
        choices=["auto", "zeroshot", "retrieval", "linear-probe"],
        help="auto: retrieval for caption data, zero-shot otherwise [auto]",
    )
    p.add_argument("--output", default=None, help="JSON-lines file the rows are appended to")
    p.add_argument("--split", default="test", help="split of a CLIP_benchmark dataset [test]")
    p.add_argument("--label-field", default=None, help="json field holding the class (image-caption shards)")
    p.add_argument("--classnames", default=None, help="file of class names, one a line (overrides the dataset's)")
    p.add_argument(
        "--templates",
        default=None,
        help="openai | simple | none | FILE ('{c}' or '{}' templates); default: the dataset's, else simple",
    )
    p.add_argument("--recall-k", type=positive_int, nargs="+", default=[1, 5, 10], help="k of recall@k [1 5 10]")
    p.add_argument(
        "--train-dataset",
        default=None,
        help="linear probe: training data (default: the dataset's train split, else half of it)",
    )
    p.add_argument(
        "--val-proportion", type=finite_float, default=0.2, help="linear probe: validation share for C [0.2]"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--max-samples", type=positive_int, default=None, help="evaluate only the first N samples")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --output file that is not evaluation rows (instead of refusing)",
    )
    p.set_defaults(func=run)


def _print_row(row: dict) -> None:
    metrics = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row["metrics"].items())
    skipped = f", skipped {row['skipped']}" if sum(row["skipped"].values()) else ""
    print(f"{row['dataset']} [{row['task']}, {row['num_samples']} samples{skipped}]: {metrics}")


def run(args) -> int:
    from pathlib import Path

    from clipkit.cli.commands.embed import load_model
    from clipkit.evaluation import evaluate, open_dataset, write_rows
    from clipkit.evaluation.tasks import ROWS_FORMAT, is_rows_file
    from clipkit.io import check_output_path

    if args.output:  # refused before any work: a file that is not rows of ours
        check_output_path(
            args.output,
            ROWS_FORMAT,
            [*args.dataset, args.train_dataset],
            args.overwrite,
            kind="file",
            recognise=is_rows_file,
        )
    model = load_model(args)
    rows = []
    for path in args.dataset:
        dataset = open_dataset(
            path, split=args.split, label_field=args.label_field, classnames=args.classnames, templates=args.templates
        )
        row = evaluate(
            model,
            dataset,
            args.task,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            recall_k=tuple(args.recall_k),
            train=args.train_dataset,
            val_proportion=args.val_proportion,
            seed=args.seed,
            model_name=str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model,
            pretrained=args.pretrained or None,
            progress=True,
        )
        _print_row(row)
        rows.append(row)
    if args.output:
        write_rows(rows, args.output, overwrite=args.overwrite, inputs=[*args.dataset, args.train_dataset])
        print(f"appended {len(rows)} row(s) to {args.output}")
    return 0
