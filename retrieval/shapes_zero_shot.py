"""Zero-shot accuracy per shapes attribute (shape, color, size, position, hat) on shapes splits.

    clipkit shapes --split val --num 1000 --seed 1 --out data/val
    clipkit shapes --split holdout --num 1000 --seed 2 --out data/holdout
    python retrieval/shapes_zero_shot.py --model runs/shapes-small-clip/model data/val data/holdout

Class prompts are clipkit.data.shapes.attribute_prompts (used whole: template "{}");
labels come from each sample's json. Prints a table; --json writes the reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def evaluate_split(model, shard_dir: str, attributes) -> dict:
    from clipkit.data.shapes import attribute_label, attribute_prompts
    from clipkit.data.shards import shard_pipeline
    from clipkit.zeroshot import ZeroShotClassifier

    urls = sorted(str(p) for p in Path(shard_dir).glob("*.tar"))
    if not urls:
        raise FileNotFoundError(f"no .tar shards in {shard_dir!r}")
    pipeline, _ = shard_pipeline(urls, fields=("image", "json"), split_by_node=False)
    images, metas = zip(*[(im, m) for im, m in pipeline])
    embeddings = model.encode_images(list(images)).numpy()
    out = {}
    for attribute in attributes:
        clf = ZeroShotClassifier(model, attribute_prompts(attribute), templates="none")
        labels = [attribute_label(m, attribute) for m in metas]
        out[attribute] = clf.evaluate(embeddings, labels)
    return out


def main(argv=None) -> int:
    import clipkit
    from clipkit.data.shapes import ATTRIBUTES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("splits", nargs="+", help="shard folders (e.g. data/val data/holdout)")
    ap.add_argument("--attributes", default=",".join(ATTRIBUTES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    model = clipkit.load(args.model) if Path(args.model).is_dir() else clipkit.create(args.model, seed=0)
    attributes = args.attributes.split(",")
    reports = {split: evaluate_split(model, split, attributes) for split in args.splits}
    print(f"{'split':<24}" + "".join(f"{a:>18}" for a in attributes) + "   (top-1 / balanced accuracy)")
    for split, rep in reports.items():
        print(f"{Path(split).name:<24}" + "".join(f"{rep[a]['top1']:>10.3f} / {rep[a]['balanced_accuracy']:.3f}" for a in attributes))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.identity, "reports": reports}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
