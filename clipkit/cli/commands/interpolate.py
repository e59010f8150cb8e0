"""`clipkit interpolate`: WiSE-FT weight interpolation of two models, or a sweep of it with a trade-off plot."""

from __future__ import annotations

import argparse

from clipkit.cli.types import finite_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="WiSE-FT: mix two models of one architecture ((1-alpha)*A + alpha*B)",
        description="With --alpha, save (1-alpha)*A + alpha*B to --out (alpha 0 = A, 1 = B, exactly). With --sweep, "
        "evaluate alpha = 0, 0.25, ..., 1 on the --dataset datasets (clipkit eval's layouts and "
        "default tasks) and write OUT/results.jsonl and OUT/tradeoff.png (first two datasets).",
    )
    p.add_argument("a", help="saved model folder (alpha = 0), typically the pretrained / zero-shot model")
    p.add_argument("b", help="saved model folder (alpha = 1), typically its fine-tuned copy")
    p.add_argument("--alpha", type=finite_float, default=None, help="mixing weight of B in [0, 1]")
    p.add_argument(
        "--sweep",
        nargs="*",
        type=finite_float,
        default=None,
        metavar="ALPHA",
        help="evaluate these alphas (default 0 0.25 0.5 0.75 1) instead of saving one model",
    )
    p.add_argument("--dataset", action="append", default=[], help="evaluation dataset for --sweep (repeat)")
    p.add_argument("--task", default="auto", choices=["auto", "zeroshot", "retrieval", "linear-probe"])
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="output model folder (--alpha) or results folder (--sweep)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what is at --out even if clipkit did not write it (once the new output is complete)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.io import check_output_path
    from clipkit.model import MODEL_FORMAT
    from clipkit.wiseft import DEFAULT_ALPHAS, SWEEP_FORMAT, interpolate, wiseft_sweep

    if (args.alpha is None) == (args.sweep is None):
        raise ValueError("give exactly one of --alpha A (save one mixed model) or --sweep [ALPHA ...]")
    if args.alpha is not None:
        # refused before any work: a user's folder or file at --out, or --out that is / holds A or B
        check_output_path(args.out, MODEL_FORMAT, [args.a, args.b], args.overwrite)
        model = interpolate(args.a, args.b, args.alpha)
        model.save(args.out, overwrite=args.overwrite, inputs=[args.a, args.b])
        print(f"saved (1 - {args.alpha:g}) * {args.a} + {args.alpha:g} * {args.b} to {args.out} ({model.identity})")
        return 0
    if not args.dataset:
        raise ValueError("--sweep needs --dataset PATH (twice for the trade-off plot)")
    check_output_path(args.out, SWEEP_FORMAT, [args.a, args.b, *args.dataset], args.overwrite)
    rows = wiseft_sweep(
        args.a,
        args.b,
        args.dataset,
        args.sweep or DEFAULT_ALPHAS,
        task=args.task,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        out_dir=args.out,
        progress=True,
        overwrite=args.overwrite,
    )
    for row in rows:
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in row["metrics"].items() if isinstance(v, float))
        print(f"alpha={row['alpha']:.2f}  {row['dataset']}: {metrics}")
    print(f"wrote {args.out}/results.jsonl" + (" and tradeoff.png" if len(args.dataset) > 1 else ""))
    return 0
