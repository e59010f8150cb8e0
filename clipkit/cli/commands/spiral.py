"""`clipkit spiral`: the 2-D spiral lab (DDPM, DDIM, flow matching and guidance you can see)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "spiral",
        help="train a tiny 2-D diffusion model and draw what every sampler does",
        description="Train two tiny denoisers on a 2-D spiral (classes person / dog / cat along "
        "its arm), sample with DDPM, DDPM without noise, DDIM and flow matching, "
        "with and without guidance; write PNG figures, metrics.json and index.html.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even if it is a folder clipkit did not write (same-named files replaced)",
    )
    p.add_argument("--quick", action="store_true", help="shorter training (for tests and smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads [1: the models are so small that more threads only add overhead]",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from clipkit.io import check_output_path
    from clipkit.labs.spiral import run_spiral_lab
    from clipkit.labs.spiral.lab import LAB_FORMAT

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_output_path(args.out, LAB_FORMAT, overwrite=args.overwrite)  # refused before training
    torch.set_num_threads(args.threads)
    m = run_spiral_lab(args.out, quick=args.quick, seed=args.seed, overwrite=args.overwrite)
    print(f"{'run':<24}{'distance':>10}{'coverage':>10}{'arm':>8}")
    rows = (
        [("data", m["data"])]
        + list(m["samplers"].items())
        + [(f"guidance {k.split('_')[1]}", v) for k, v in m["guidance"].items()]
    )
    for name, r in rows:
        arm = f"{r['arm_fraction']:.3f}" if "arm_fraction" in r else ""
        print(f"{name:<24}{r['distance']:>10.4f}{r['coverage']:>10.3f}{arm:>8}")
    print(
        f"field turns to the spiral at t <= {m['vector_field']['switch_t']}; "
        f"wrote {len(m['figures'])} figures, metrics.json and index.html to {args.out} in {m['seconds']:.0f} s"
    )
    return 0
