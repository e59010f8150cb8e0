"""`clipkit judge`: train an independent judge on labelled real images; score generated images with it.

    clipkit judge train --train-data data/icons/train --val-data data/icons/val --label-field name --out runs/judge
    clipkit judge score --judge runs/judge --images gen/ --labels gen/labels.csv --real-data data/icons/val

See clipkit/evaluation/judge.py (the judge), judge_train.py and judge_score.py (the labels file format).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import duration, nonnegative_int, positive_float, positive_int

    p = sub.add_parser(
        "judge",
        help="train / use an independent judge of generated images (labelled real data)",
        description="A small CNN trained on REAL labelled images only (never CLIP features, never "
        "generated images) that scores generated images: identification, Frechet in its "
        "features, noise / sharpness, and pixel nearest-source.",
    )
    actions = p.add_subparsers(dest="judge_command", metavar="ACTION", required=True)

    t = actions.add_parser(
        "train",
        help="train a judge on labelled shards; prints its real held-out accuracy",
        description="Train a judge on image shards whose JSON metadata holds the label field(s); "
        "it is saved in OUT/judge, with OUT/metrics.jsonl, curves.png, summary.json.",
    )
    t.add_argument("--train-data", required=True, help="training shards (a folder, brace pattern or '::' list)")
    t.add_argument("--val-data", help="real held-out shards (default: --val-samples drawn from the train data)")
    t.add_argument(
        "--label-field",
        action="append",
        required=True,
        help="JSON field to learn (repeat for several, e.g. --label-field name --label-field category)",
    )
    t.add_argument("--out", required=True, help="run folder (the judge goes to OUT/judge)")
    t.add_argument("--image-size", type=positive_int, help="judge resolution [the data's]")
    t.add_argument("--epochs", type=positive_int, default=8, help="passes over the training data [8]")
    t.add_argument("--max-steps", type=positive_int, help="stop after this many steps (overrides --epochs)")
    t.add_argument(
        "--time-budget", type=duration, metavar="DURATION", help="stop after this much training (90s, 20m, 1h, seconds)"
    )
    t.add_argument("--batch-size", type=positive_int, default=128, help="[128]")
    t.add_argument("--lr", type=positive_float, default=2e-3, help="[0.002]")
    t.add_argument("--num-samples", type=positive_int, help="read at most this many training samples [all]")
    t.add_argument("--val-samples", type=positive_int, default=500, help="held-out images read / set aside [500]")
    t.add_argument("--precision", choices=("no", "bf16"), default="bf16", help="mixed precision [bf16]")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="[0]")
    t.add_argument("--resume", help="'latest' or a checkpoint folder of this run")
    t.add_argument("--overwrite", action="store_true", help="write into --out even if clipkit did not write it")
    t.set_defaults(func=run_train)

    s = actions.add_parser(
        "score",
        help="score a folder of generated images against real ones",
        description="Labels file: CSV with a header `file,<label field>[,source]` or JSON "
        "{file: label} / {file: {field: label, source: key}}; `source` is the "
        "__key__ of the real sample an image was made from (for nearest-source).",
    )
    s.add_argument("--judge", required=True, help="a judge folder (or the run folder of `clipkit judge train`)")
    s.add_argument("--images", required=True, help="folder of generated images")
    s.add_argument("--labels", required=True, help="CSV or JSON file: image file name -> intended label(s)")
    s.add_argument("--real-data", required=True, help="real shards with the same label fields (held-out renders)")
    s.add_argument("--real-limit", type=positive_int, default=2000, help="real images read [2000]")
    s.add_argument("--candidates", type=positive_int, default=100, help="nearest-source candidates [100]")
    s.add_argument("--seed", type=nonnegative_int, default=0, help="[0]")
    s.add_argument("--out", help="also write the report as JSON here")
    s.add_argument("--overwrite", action="store_true", help="replace an --out file that clipkit did not write")
    s.set_defaults(func=run_score)


REPORT = "clipkit-judge-report"


def run_train(args) -> int:
    from clipkit.evaluation.judge_train import JudgeTrainConfig, train_judge

    config = JudgeTrainConfig(
        train_data=args.train_data,
        val_data=args.val_data,
        label_field=args.label_field,
        out_dir=args.out,
        image_size=args.image_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        lr=args.lr,
        num_samples=args.num_samples,
        val_samples=args.val_samples,
        mixed_precision=args.precision,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    record = train_judge(config)
    print(
        f"trained {record['steps']} steps in {record['train_seconds']} s on {record['train_samples']} real images "
        f"({', '.join(f'{f}: {n} classes' for f, n in record['classes'].items())}); judge in {args.out}/judge"
    )
    print(_accuracy_line(record))
    return 0


def _accuracy_line(record: dict) -> str:
    parts = [
        f"{f} top-1 {v['top1']:.3f}, top-5 {v['top5']:.3f} (chance {v['chance']:.4f}; {v['num']} images"
        + (f", {v['unknown']} with labels absent from train" if v["unknown"] else "")
        + ")"
        for f, v in record["real_accuracy"].items()
        if v["top1"] is not None
    ]
    return "judge accuracy on real held-out images: " + ("; ".join(parts) or "no held-out label seen in train")


def run_score(args) -> int:
    from clipkit.evaluation.judge import Judge
    from clipkit.evaluation.judge_score import report_lines, score_folder
    from clipkit.io import check_output_path, output_file

    if args.out:  # refused before any work
        check_output_path(
            args.out, REPORT, [args.judge, args.images, args.labels, args.real_data], args.overwrite, kind="file"
        )
    report = score_folder(
        Judge.load(args.judge),
        args.images,
        args.labels,
        args.real_data,
        real_limit=args.real_limit,
        num_candidates=args.candidates,
        seed=args.seed,
    )
    for line in report_lines(report):
        print(line)
    if report.get("skipped"):
        from collections import Counter

        from clipkit.data.folders import skipped_note

        print(f"{args.images}: {skipped_note(Counter(report['skipped']))}")
    if args.out:
        import json

        with output_file(args.out, REPORT, overwrite=args.overwrite, mode="w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0
