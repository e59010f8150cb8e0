"""`clipkit embed`: images (folder, file list or shards) and/or texts -> clip-retrieval's embedding layout."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a saved clipkit model directory, a clipkit preset or an open_clip architecture")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local weights file")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto [auto]")


def load_model(args):
    import clipkit
    from pathlib import Path

    if Path(args.model).is_dir() or args.pretrained:
        return clipkit.load(args.model, pretrained=args.pretrained, device=args.device)
    # A preset gives a fresh (untrained) model: seeded, so that repeated commands agree.
    return clipkit.create(args.model, device=args.device if args.device != "auto" else "cpu", seed=0)


def model_source(args) -> str | None:
    """How to load the model again (recorded in manifests so `clipkit search` needs no --model)."""
    from pathlib import Path

    if args.pretrained:
        return None
    return str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed images / captions / texts into img_emb, text_emb, metadata parts",
                       description="Write embeddings in clip-retrieval's layout: OUT/img_emb/img_emb_0.npy, "
                                   "OUT/text_emb/text_emb_0.npy, OUT/metadata/metadata_0.parquet (key, path, "
                                   "caption), in parts of --part-size rows.")
    add_model_args(p)
    src = p.add_argument_group("sources (one of --images / --shards, and/or --texts)")
    src.add_argument("--images", help="image folder or file list (.txt, one path a line)")
    src.add_argument("--shards", help="webdataset shards, e.g. 'data/{00000..00009}.tar'")
    src.add_argument("--texts", help="text file, one text a line (captions of --images, or texts alone)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-captions", action="store_true", help="skip caption (text) embeddings")
    p.add_argument("--batch-size", type=int, default=256, help="encoder batch size [256]")
    p.add_argument("--part-size", type=int, default=100_000, help="rows per written part [100000]")
    p.add_argument("--float16", action="store_true", help="store float16 (half the disk) instead of float32")
    p.add_argument("--overwrite", action="store_true", help="replace embeddings already in --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipkit.embeddings import write_embeddings

    model = load_model(args)
    summary = write_embeddings(model, args.out, images=args.images, shards=args.shards, texts=args.texts,
                               captions=not args.no_captions, batch_size=args.batch_size,
                               part_size=args.part_size, dtype="float16" if args.float16 else "float32",
                               overwrite=args.overwrite, progress=True, model_source=model_source(args))
    skipped = sum(summary.get("skipped", {}).values())
    print(f"wrote {summary['count']} rows ({', '.join(summary['modalities'])}) in {summary['parts']} part(s) "
          f"to {args.out}" + (f"; skipped {skipped} bad samples {summary['skipped']}" if skipped else ""))
    return 0
