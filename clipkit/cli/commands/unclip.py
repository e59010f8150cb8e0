"""`clipkit train-decoder`, `train-prior`, `train-upsampler`, `clipkit generate`: unCLIP from the command line.

clipkit train-decoder --config decoder/configs/shapes-decoder.json
clipkit train-prior   --config decoder/configs/shapes-prior.json
clipkit train-ar-prior --clip runs/clip/model --train-data data/train --pipeline-dir runs/unclip   # AR prior
clipkit generate --pipeline runs/unclip --prior ar --prompt "a red circle" --out out/    # ... sampled with it
clipkit train-upsampler --config shapes-upsampler --train-data data/train64 --clip runs/clip/model
clipkit generate --pipeline runs/unclip --prompt "a red circle" --upsample --out out/    # the cascade
clipkit generate --pipeline runs/unclip --prompt "a red circle wearing a hat" --num 8 --out out/
clipkit generate --pipeline runs/unclip --expr 'img:"circle.png" + 1.0*text:"hat"' --out out/
clipkit generate --pipeline runs/unclip --expr 'img:"circle.png"' --add-vector hat_vector.npy --out out/
clipkit generate --pipeline runs/unclip --variations circle.png --trajectory --out out/
clipkit generate --pipeline runs/unclip --interpolate circle.png "text:a blue star" --num 8 --out out/
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from clipkit.cli.types import finite_float, positive_int

RESUME_HINT = "the run folder keeps its last checkpoint: run the same command with --resume latest to go on"
IMAGES = "clipkit-generated-images"  # the manifest format of a `clipkit generate --out` folder


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.config import add_config_arguments
    from clipkit.train.config import ArPriorTrainConfig, DecoderTrainConfig, PriorTrainConfig, UpsamplerTrainConfig

    for name, cls, fn, what, data in (
        (
            "train-decoder",
            DecoderTrainConfig,
            run_train_decoder,
            "the unCLIP decoder (CLIP image embedding -> pixels)",
            "image shards embedded by a frozen CLIP",
        ),
        (
            "train-prior",
            PriorTrainConfig,
            run_train_prior,
            "the unCLIP diffusion prior (text embedding -> image embedding)",
            "image-caption shards embedded by a frozen CLIP, or on pairs from `clipkit embed` (--embeddings)",
        ),
        (
            "train-ar-prior",
            ArPriorTrainConfig,
            run_train_ar_prior,
            "unCLIP's autoregressive prior (text embedding -> PCA components of the image embedding, each "
            "quantised into 1,024 bins, predicted in order by a causal transformer)",
            "the same pairs as train-prior (shards embedded by a frozen CLIP, or --embeddings)",
        ),
        (
            "train-upsampler",
            UpsamplerTrainConfig,
            run_train_upsampler,
            "the cascade's super-resolution stage (32 -> 64 px, conditioned on the low-resolution image)",
            "any image shards (each image is the target, its downsample the condition)",
        ),
    ):
        p = sub.add_parser(
            name,
            help=f"train {what}",
            description=f"Train {what} on {data}; --pipeline-dir collects it into an UnCLIP folder.",
        )
        add_config_arguments(p, cls)
        p.set_defaults(func=fn, config_cls=cls, interrupted_hint=RESUME_HINT)

    p = sub.add_parser(
        "generate",
        help="generate images with an unCLIP pipeline (text, image, expression)",
        description="Text -> prior -> decoder (--prompt), variations of an image (--variations), "
        "an interpolation (--interpolate A B) or an embedding expression (--expr). "
        "Writes each image and a grid.png (and trajectory.png) into --out.",
    )
    p.add_argument("--pipeline", required=True, help="UnCLIP folder (unclip.json, decoder/, prior/)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text prompt")
    what.add_argument("--expr", help='embedding expression, e.g. \'img:"a.png" - img:"b.png" + text:"hat"\'')
    what.add_argument("--variations", metavar="IMAGE", help="decode variations of this image")
    what.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="slerp between two image paths or text:PROMPT")
    p.add_argument(
        "--add-vector",
        metavar="NPY",
        default=None,
        help="with --expr: add this (D,) .npy vector (e.g. the mean hat vector) to the expression",
    )
    p.add_argument("--out", required=True, help="output directory (written whole when every image is done)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what is at --out even if clipkit did not write it (once the images are done)",
    )
    p.add_argument("--num", type=positive_int, default=8, help="images (interpolation steps) [8]")
    p.add_argument("--steps", type=positive_int, default=50, help="decoder sampling steps [50]")
    p.add_argument("--sampler", choices=("ddim", "ddpm", "flow"), default="ddim", help="[ddim]")
    p.add_argument("--prior-guidance", type=finite_float, default=2.0, help="[2.0]")
    p.add_argument("--decoder-guidance", type=finite_float, default=3.0, help="[3.0]")
    p.add_argument("--negative-prompt", default=None, help="pushed away from (through the prior)")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    p.add_argument("--trajectory", action="store_true", help="also save the denoising steps as trajectory.png")
    p.add_argument("--upsample", action="store_true", help="add the pipeline's upsampler (super-resolution stage)")
    p.add_argument("--upsample-steps", type=positive_int, default=7, help="upsampler sampling steps [7]")
    p.add_argument("--clip", default=None, help="CLIP directory to use instead of the recorded one (same weights)")
    p.add_argument(
        "--prior",
        choices=("diffusion", "ar"),
        default=None,
        help="which prior of the pipeline folder: prior/ (diffusion) or ar_prior/ [prior/ when present]",
    )
    p.set_defaults(func=run_generate)


def _train(args, kind: str) -> int:
    import json

    from clipkit.cli.commands.train import config_from_args
    from clipkit.train.unclip import train_ar_prior, train_decoder, train_prior, train_upsampler

    config = config_from_args(args.config_cls, args)
    trainers: dict[str, Callable[[Any], dict]] = {
        "decoder": train_decoder,
        "prior": train_prior,
        "upsampler": train_upsampler,
        "ar_prior": train_ar_prior,
    }
    summary = trainers[kind](config)
    print(json.dumps(summary, indent=2))
    return 0


def run_train_decoder(args) -> int:
    return _train(args, "decoder")


def run_train_prior(args) -> int:
    return _train(args, "prior")


def run_train_upsampler(args) -> int:
    return _train(args, "upsampler")


def run_train_ar_prior(args) -> int:
    return _train(args, "ar_prior")


def run_generate(args) -> int:
    from pathlib import Path

    import clipkit
    from clipkit.images import make_grid
    from clipkit.io import check_output_path, staged_output, write_manifest
    from clipkit.unclip import trajectory_strip

    inputs = [
        args.pipeline,
        args.clip,
        args.add_vector,
        args.variations,
        *[e for e in args.interpolate or () if not e.startswith("text:")],
    ]
    check_output_path(args.out, IMAGES, inputs, args.overwrite)  # refused before any work
    pipe = clipkit.UnCLIP.load(args.pipeline, clip=args.clip, prior=getattr(args, "prior", None))
    decode = dict(
        steps=args.steps,
        sampler=args.sampler,
        guidance_scale=args.decoder_guidance,
        seed=args.seed,
        return_trajectory=args.trajectory,
    )
    if args.upsample:
        decode.update(upsample=True, upsample_steps=args.upsample_steps)
    traj = None
    if args.prompt is not None:
        result = pipe.generate(
            args.prompt,
            num_images=args.num,
            steps=args.steps,
            sampler=args.sampler,
            prior_guidance=args.prior_guidance,
            decoder_guidance=args.decoder_guidance,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            return_trajectory=args.trajectory,
            **({"upsample": True, "upsample_steps": args.upsample_steps} if args.upsample else {}),
        )
    elif args.expr is not None:
        result = pipe.render_expression(args.expr, num_images=args.num, add_vector=args.add_vector, **decode)
    elif args.variations is not None:
        result = pipe.variations(args.variations, n=args.num, **decode)
    else:
        ends = [
            pipe.embed(text=e[5:], seed=args.seed) if e.startswith("text:") else pipe.embed(image=e)
            for e in args.interpolate
        ]
        result = pipe.interpolate(embeddings=ends, n=args.num, **decode)
    images, traj = result if args.trajectory else (result, None)
    out = Path(args.out)
    with staged_output(out, IMAGES, inputs=inputs, overwrite=args.overwrite) as stage:  # complete or absent
        names = [f"{i:03d}.png" for i in range(len(images))]
        for name, im in zip(names, images):
            im.save(stage.dir / name)
        make_grid(images, columns=min(8, len(images)), scale=4).save(stage.dir / "grid.png")
        names.append("grid.png")
        if traj is not None:
            trajectory_strip(traj).save(stage.dir / "trajectory.png")
            names.append("trajectory.png")
        write_manifest(
            stage.dir,
            IMAGES,
            dict.fromkeys(names),
            count=len(images),
            pipeline=str(Path(args.pipeline).resolve()),
            query={k: getattr(args, k) for k in ("prompt", "expr", "variations", "interpolate", "seed")},
        )
    print(f"wrote {len(images)} images and grid.png{' and trajectory.png' if traj is not None else ''} to {out}")
    return 0
