"""unCLIP quality on held-out shapes, judged by the independent shapes judge (CLIP-judged figures beside).

    python benchmarks/bench_unclip.py --pipeline runs/unclip --out runs/bench-unclip [--num 64]

Side by side on the same captions (clipkit/shapes/unclip_eval.py): the text
embedding decoded directly, text -> prior -> decoder, prior + decoder + upsampler
(when the pipeline has one) and bicubic x2 of the prior + decoder output. For each:
the judge's agreement with the caption's attributes, sharpness (palette x edge
energy as a ratio to real renders of the same resolution), and the Frechet distance
in the judge's features as a multiple of the real-vs-real floor; then inversion,
hat arithmetic, samplers and the guidance sweep. The judge's own accuracy on real
images is printed first: a figure is only as good as its ruler. Targets from issue 12.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ATTRS = ("shape", "color", "size", "position", "hat")
METHODS = (("direct_text_embedding", "text embedding -> decoder"), ("with_prior", "text -> prior -> decoder"),
           ("with_prior_upsampled", "prior + decoder + upsampler"),
           ("with_prior_bicubic_64", "prior + decoder, bicubic x2"))


def _row(label: str, m: dict | None) -> str:
    if m is None:      # a stage this pipeline does not have
        return f"{label:32s} {'(no upsampler in this pipeline: clipkit train-upsampler adds one)':>60s}"
    a, s, f = m["agreement"], m["sharpness"], m["frechet"]
    per = " ".join(f"{a[k]:6.3f}" for k in ATTRS)
    return (f"{label:32s} {m['image_size']:4d} {a['mean']:6.3f} {per} {s['sharpness']:6.3f} {s['palette']:6.3f} "
            f"{s['edge_ratio']:6.3f} {f['ratio']:7.2f} {m['clip_agreement']['mean']:6.3f}")


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
    p.add_argument("--print-only", action="store_true", help="print the tables of the metrics.json in --out again")
    args = p.parse_args()
    if args.print_only:
        print_report(json.loads((Path(args.out) / "metrics.json").read_text()), args.out)
        return

    import torch

    import clipkit
    from clipkit.shapes.unclip_eval import evaluate_unclip
    from clipkit.io import write_json

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
    write_json(Path(args.out) / "metrics.json", m)
    print_report(m, args.out)


def print_report(m: dict, out: str) -> None:
    """The tables of one run's metrics (what main() measured, or a saved metrics.json)."""
    print(f"\n{m['judge']['summary']}")
    t2i, inv, hat = m["text_to_image"], m["inversion"], m["hat_arithmetic"]
    print(f"\ntext -> image, {t2i['methods']['with_prior']['frechet']['num']} captions naming {', '.join(ATTRS)}; "
          f"judge agreement with the caption, sharpness (1.0 = real renders), Frechet / real-vs-real floor, CLIP-judged agreement last")
    print(f"{'method':32s} {'px':>4s} {'mean':>6s} " + " ".join(f"{a[:6]:>6s}" for a in ATTRS)
          + f" {'sharp':>6s} {'palet':>6s} {'edge':>6s} {'FD/flr':>7s} {'CLIP':>6s}")
    for key, label in METHODS:
        print(_row(label, t2i["methods"].get(key)))
    fd = t2i["methods"]["with_prior"]["frechet"]
    print(f"(Frechet floor: {fd['floor']:.2f} for two disjoint sets of {fd['num']} real images)")
    div = t2i["diversity"]
    print(f"diversity over {div['samples_per_prompt']} samples of each of {div['prompts']} prompts: "
          f"pixel distance {div['generated']['pixel_distance']:.3f} (real renders {div['real']['pixel_distance']:.3f}), "
          f"distinct backgrounds {div['generated']['distinct']['background']:.2f} "
          f"(real {div['real']['distinct']['background']:.2f})")

    got = {"inversion: worst attribute": min(inv["agreement"][a] for a in (*ATTRS, "background")),
           "text->prior->decoder: mean": t2i["with_prior"]["mean"],
           "prior beats direct by": t2i["with_prior"]["mean"] - t2i["direct_text_embedding"]["mean"],
           "sharpness 32 px (text->image)": t2i["methods"]["with_prior"]["sharpness"]["sharpness"],
           "Frechet / floor (text->image)": t2i["methods"]["with_prior"]["frechet"]["ratio"],
           "hat arithmetic judged with hat": hat["judged_wearing_hat"]}
    targets = {"inversion: worst attribute": (0.97, ">="), "text->prior->decoder: mean": (0.93, ">="),
               "prior beats direct by": (0.0, ">"), "sharpness 32 px (text->image)": (0.9, ">="),
               "Frechet / floor (text->image)": (3.0, "<="), "hat arithmetic judged with hat": (0.9, ">=")}
    up, bic = t2i["methods"].get("with_prior_upsampled"), t2i["methods"]["with_prior_bicubic_64"]
    if up is not None:                                   # the cascade: >= 0.9 x real 64 px, clearly above bicubic
        got["sharpness 64 px cascade"] = up["sharpness"]["sharpness"]
        got["cascade sharpness over bicubic"] = up["sharpness"]["sharpness"] - bic["sharpness"]["sharpness"]
        targets["sharpness 64 px cascade"], targets["cascade sharpness over bicubic"] = (0.9, ">="), (0.1, ">=")
    print(f"\n{'measure (issue 12 targets)':34s} {'value':>8s} {'target':>10s}")
    for k, v in got.items():
        t, op = targets[k]
        ok = v >= t if op == ">=" else v > t if op == ">" else v <= t
        print(f"{k:34s} {v:8.3f} {op:>4s} {t:5.2f}  {'ok' if ok else 'MISSED'}")
    print(f"\ninversion: judge agreement with the source's attributes {inv['agreement']['mean']:.3f} "
          + " ".join(f"{a} {inv['agreement'][a]:.3f}" for a in (*ATTRS, "background"))
          + f"; sharpness {inv['sharpness']['sharpness']:.3f}; Frechet/floor {inv['frechet']['ratio']:.2f}"
          + f"; CLIP-judged agreement {inv['clip']['agreement']['mean']:.3f}, cosine {inv['clip']['cosine']:.3f}")
    print(f"hat arithmetic: {hat['judged_wearing_hat']:.3f} judged wearing a hat by the judge (without the vector "
          f"{hat['baseline_decoded_without_vector']:.3f}); other attributes kept {hat['other_attributes_kept']['mean']:.3f}; "
          f"CLIP-judged {hat['clip']['judged_wearing_hat']:.3f}")
    for name, s in m["samplers"].items():
        print(f"sampler {name:24s} {s['seconds_per_image']:8.3f} s/img  agreement {s['agreement']:.3f}  "
              f"sharpness {s['sharpness']:.3f}  CLIP cos {s['cosine']:.3f}")
    for r in m["guidance_sweep"]:
        print(f"guidance {r['scale']:4.1f}: agreement {r['agreement']:.3f}  sharpness {r['sharpness']:.3f}  "
              f"diversity {r['diversity']:.4f}")
    training = m.get("training", {})
    total = sum((t.get("train_seconds") or 0) + (t.get("embed_seconds") or 0) for t in training.values())
    print(f"training time (train + embed) of {list(training)}: {total / 60:.1f} min; benchmark "
          f"{m['benchmark_seconds']:.0f} s on a shared 2-core machine; outputs in {out}")


if __name__ == "__main__":
    main()
