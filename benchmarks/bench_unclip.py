"""unCLIP quality on held-out shapes, judged zero-shot by the trained CLIP (no Inception weights here).

    python benchmarks/bench_unclip.py --pipeline runs/unclip --out runs/bench-unclip [--num 64]

Measures (see clipkit/unclip/evaluate.py): inversion attribute agreement + cosine,
text -> image accuracy with the prior vs decoding the text embedding directly,
hat arithmetic -> pixels, DDIM-50 and flow-50 vs DDPM-1000 (time and agreement),
and a decoder guidance sweep plot. Targets from issue 6 are printed beside the
figures, with the training time read from the runs' summary.json files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TARGETS = {"inversion agreement": 0.90, "text->image with prior": 0.85, "hat arithmetic": 0.80}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="runs/unclip")
    p.add_argument("--out", default="runs/bench-unclip")
    p.add_argument("--num", type=int, default=64, help="held-out samples per measure [64]")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--decoder-guidance", type=float, default=3.0)
    p.add_argument("--prior-guidance", type=float, default=2.0)
    p.add_argument("--ddpm-images", type=int, default=16, help="images for the slow DDPM-1000 run [16]")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--runs", nargs="*", default=["runs/unclip-decoder", "runs/unclip-prior"],
                   help="training run folders whose summary.json gives the training time")
    args = p.parse_args()

    import torch

    import clipkit
    from clipkit.experiments.unclip_eval import evaluate_unclip

    torch.set_num_threads(args.threads)
    start = time.time()
    pipe = clipkit.UnCLIP.load(args.pipeline)
    samplers = {f"flow-{args.steps}": ("flow", args.steps, args.num), "ddpm-1000": ("ddpm", 1000, args.ddpm_images),
                f"ddim-{args.steps}-on-{args.ddpm_images}": ("ddim", args.steps, args.ddpm_images)}
    m = evaluate_unclip(pipe, args.out, num=args.num, steps=args.steps, decoder_guidance=args.decoder_guidance,
                        prior_guidance=args.prior_guidance, samplers=samplers)
    training = {}
    for run in args.runs:
        f = Path(run) / "summary.json"
        if f.is_file():
            s = json.loads(f.read_text())
            training[run] = {k: s.get(k) for k in ("steps", "train_seconds", "embed_seconds", "params")}
    m["training"] = training
    m["benchmark_seconds"] = round(time.time() - start, 1)
    (Path(args.out) / "metrics.json").write_text(json.dumps(m, indent=2))

    got = {"inversion agreement": m["inversion"]["agreement"]["mean"],
           "text->image with prior": m["text_to_image"]["with_prior"]["mean"],
           "hat arithmetic": m["hat_arithmetic"]["judged_wearing_hat"]}
    print(f"\n{'measure':32s} {'value':>8s} {'target':>8s}")
    for k, v in got.items():
        print(f"{k:32s} {v:8.3f} {TARGETS[k]:8.2f}  {'ok' if v >= TARGETS[k] else 'MISSED'}")
    print(f"{'text->image direct text emb':32s} {m['text_to_image']['direct_text_embedding']['mean']:8.3f}")
    print(f"{'inversion cosine':32s} {m['inversion']['cosine']:8.3f}")
    print(f"{'real images judged (accuracy)':32s} {m['inversion']['accuracy_real_images']['mean']:8.3f}")
    for name, s in m["samplers"].items():
        print(f"sampler {name:24s} {s['seconds_per_image']:8.3f} s/img  agreement {s['agreement']:.3f}  cos {s['cosine']:.3f}")
    for r in m["guidance_sweep"]:
        print(f"guidance {r['scale']:4.1f}: agreement {r['agreement']:.3f}  diversity {r['diversity']:.4f}")
    total = sum((t.get("train_seconds") or 0) + (t.get("embed_seconds") or 0) for t in training.values())
    print(f"training time (train + embed) of {list(training)}: {total / 60:.1f} min; outputs in {args.out}")


if __name__ == "__main__":
    main()
