"""The hat vector: emb(shape with hat) - emb(same shape without) lands next to the word "hat".

    python retrieval/hat_vector.py --model runs/shapes-small-clip/model --pairs data/hat_pairs \
        --out runs/hat_vector            # -> hat_vector.npy, hat_vector.json

For every hat pair (`clipkit shapes --split hat_pairs`), the difference of the
two image embeddings is compared with the text embeddings of a vocabulary
(clipkit/data/vocabulary.txt, or --vocabulary FILE); we report how often "hat"
ranks first, its mean rank, the mean cosine, and save the averaged hat vector.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from clipkit.model import resolve_model
    from clipkit.shapes.evaluate import hat_vector_experiment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="saved model directory (or a preset, for a smoke run)")
    ap.add_argument(
        "--pairs", default="100", help="hat_pairs shard folder / url pattern, or a number of pairs to generate"
    )
    ap.add_argument("--vocabulary", default=None, help="vocabulary file [shipped list]")
    ap.add_argument("--word", default="hat")
    ap.add_argument("--out", default="runs/hat_vector", help="folder for hat_vector.npy and hat_vector.json")
    args = ap.parse_args(argv)
    model = resolve_model(args.model)
    pairs = int(args.pairs) if args.pairs.isdigit() else args.pairs
    result = hat_vector_experiment(model, pairs, vocabulary=args.vocabulary, word=args.word)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "hat_vector.npy", result["hat_vector"])
    summary = {k: v for k, v in result.items() if k not in ("hat_vector", "ranks")}
    summary["model"] = model.identity
    (out / "hat_vector.json").write_text(json.dumps(summary, indent=2))
    print(f"{result['pairs']} pairs, vocabulary of {result['vocabulary_size']} words")
    print(
        f"'{args.word}' top-1 for {result['top1_rate']:.1%} of pairs; mean rank {result['mean_rank']:.2f} "
        f"(median {result['median_rank']:.0f}); mean cosine {result['mean_cosine']:.4f}; "
        f"consistency {result['consistency']:.4f}"
    )
    print(
        "words nearest the averaged hat vector:",
        ", ".join(f"{w} ({s:.3f})" for w, s in result["nearest_to_hat_vector"]),
    )
    print(f"saved {out / 'hat_vector.npy'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
