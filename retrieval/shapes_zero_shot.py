"""Zero-shot accuracy per shapes attribute (shape, color, size, position, hat) on shapes splits.

    clipkit shapes --split val --num 1000 --seed 1 --out data/val
    clipkit shapes --split holdout --num 1000 --seed 2 --out data/holdout
    python retrieval/shapes_zero_shot.py --model runs/shapes-small-clip/model data/val data/holdout

Class prompts are clipkit.shapes.world.attribute_prompts (used whole: template "{}");
labels come from each sample's json (clipkit.shapes.evaluate.attribute_accuracy).
"""

import argparse
import json

from clipkit.data.shards import read_samples
from clipkit.model import resolve_model
from clipkit.shapes.evaluate import ATTRIBUTES, attribute_accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("splits", nargs="+", help="shard folders (e.g. data/val data/holdout)")
    ap.add_argument("--json", default=None, help="also write the accuracies here")
    args = ap.parse_args(argv)
    model = resolve_model(args.model)
    reports = {split: attribute_accuracy(model, *zip(*read_samples(split, ("image", "json")))) for split in args.splits}
    print(f"{'split':<24}" + "".join(f"{a:>10}" for a in ATTRIBUTES))
    for split, acc in reports.items():
        print(f"{split:<24}" + "".join(f"{acc[a]:>10.3f}" for a in ATTRIBUTES))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model.identity, "top1": reports}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
