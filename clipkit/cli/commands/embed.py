"""`clipkit embed`: images (folder, file list or shards) and/or texts -> clip-retrieval's embedding layout."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a saved clipkit model directory, a clipkit preset, an open_clip architecture or "
        "an open_clip-style model config file (my-model.json: embed_dim, vision_cfg, text_cfg)",
    )
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local weights file")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto [auto]")


def load_model(args):
    import os

    from clipkit.model import resolve_model

    device = args.device
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a launched rank: its own GPU, if any
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    return resolve_model(args.model, pretrained=args.pretrained, device=device)


def model_source(args) -> str | None:
    """How to load the model again (recorded in manifests so `clipkit search` needs no --model)."""
    from pathlib import Path

    if args.pretrained:
        return None
    return str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model


def register(sub: argparse._SubParsersAction) -> None:
    from clipkit.cli.types import positive_int

    p = sub.add_parser(
        "embed",
        help="embed images / captions / texts into img_emb, text_emb, metadata parts",
        description="Write embeddings in clip-retrieval's layout: OUT/img_emb/img_emb_00000.npy, "
        "OUT/text_emb/text_emb_00000.npy, OUT/metadata/metadata_00000.parquet (key, path, "
        "caption), one part per shard or per --part-size images / texts, and "
        "OUT/manifest.json last. Interrupted runs resume when started again with the same "
        "arguments. Several processes: torchrun --nproc_per_node N -m clipkit embed ... "
        "(or accelerate launch -m clipkit embed ...).",
    )
    add_model_args(p)
    src = p.add_argument_group("sources (one of --images / --shards, and/or --texts)")
    src.add_argument("--images", help="image folder or file list (.txt, one path a line)")
    src.add_argument("--shards", help="webdataset shards, e.g. 'data/{00000..00009}.tar'")
    src.add_argument("--texts", help="text file, one text a line (captions of --images, or texts alone)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-captions", action="store_true", help="skip caption (text) embeddings")
    p.add_argument("--batch-size", type=positive_int, default=256, help="encoder batch size [256]")
    p.add_argument(
        "--part-size",
        type=positive_int,
        default=100_000,
        help="rows per part for --images / --texts (shards give one part each) [100000]",
    )
    p.add_argument("--float16", action="store_true", help="store float16 (half the disk) instead of float32")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace embeddings (or anything else) at --out, once the new ones are complete",
    )
    p.add_argument("--allow-empty", action="store_true", help="write the folder even if no input was readable")
    p.set_defaults(func=run, interrupted_hint="the finished parts are kept: run the same command again to resume")


def run(args) -> int:
    import os

    from clipkit.retrieval.embeddings.writer import write_embeddings

    model = load_model(args)
    summary = write_embeddings(
        model,
        args.out,
        images=args.images,
        shards=args.shards,
        texts=args.texts,
        captions=not args.no_captions,
        batch_size=args.batch_size,
        part_size=args.part_size,
        dtype="float16" if args.float16 else "float32",
        overwrite=args.overwrite,
        allow_empty=args.allow_empty,
        progress=True,
        model_source=model_source(args),
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    skipped = summary.get("skipped", {})
    total_skipped = sum(skipped.values())
    print(
        f"{args.out}: {summary['count']} rows ({', '.join(summary['modalities'])}) in {summary['parts_count']} "
        f"part(s)" + (f"; skipped {total_skipped} unreadable samples {skipped}" if total_skipped else "")
    )
    return 0
