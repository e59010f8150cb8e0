"""unCLIP quality on held-out shapes, judged by the independent shapes judge (CLIP-judged figures beside).

    python benchmarks/bench_unclip.py --pipeline runs/unclip --out runs/bench-unclip [--num 64] [--rounds 3]

Side by side on the same captions (clipkit/shapes/unclip_eval.py): the text
embedding decoded directly, text -> prior -> decoder, prior + decoder + upsampler
(when the pipeline has one) and bicubic x2 of the prior + decoder output. For each:
the judge's agreement with the caption's attributes, sharpness (palette x edge
energy as a ratio to real renders of the same resolution), and the Frechet distance
in the judge's features as a multiple of the real-vs-real floor; then inversion,
hat arithmetic, samplers and the guidance sweep. The judge's own accuracy on real
images is printed first: a figure is only as good as its ruler. Targets: the decoder recipe's goals.

The quality figures are seeded (the same numbers every run). The samplers' speed is a
side-by-side timing: flow-N, DDIM-N and DDPM-1000 decode the same --time-images embeddings,
alternating (A B C, C B A, ...) for --rounds rounds through benchmarks/protocol.py; seconds
per image are medians with their range, the speed-up over DDPM-1000 is paired round by
round, and a window in which other processes took CPU is marked (--strict stops instead).
Tables printed and written to benchmarks/results/unclip.json / .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import protocol

ATTRS = ("shape", "color", "size", "position", "hat")
METHODS = (
    ("direct_text_embedding", "text embedding -> decoder"),
    ("with_prior", "text -> prior -> decoder"),
    ("with_prior_upsampled", "prior + decoder + upsampler"),
    ("with_prior_bicubic_64", "prior + decoder, bicubic x2"),
)
TARGETS = {
    "inversion: worst attribute": (0.97, ">="),
    "text->prior->decoder: mean": (0.93, ">="),
    "prior beats direct by": (0.0, ">"),
    "sharpness 32 px (text->image)": (0.9, ">="),
    "Frechet / floor (text->image)": (3.0, "<="),
    "hat arithmetic judged with hat": (0.9, ">="),
    "sharpness 64 px cascade": (0.9, ">="),
    "cascade sharpness over bicubic": (0.1, ">="),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="runs/unclip")
    p.add_argument("--out", default="runs/bench-unclip")
    p.add_argument("--num", type=int, default=64, help="held-out samples per measure [64]")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--decoder-guidance", type=float, default=3.0)
    p.add_argument("--prior-guidance", type=float, default=2.0)
    p.add_argument("--ddpm-images", type=int, default=16, help="images for the slow DDPM-1000 quality run [16]")
    p.add_argument("--time-images", type=int, default=4, help="images per timed sampler run [4]")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument(
        "--runs",
        nargs="*",
        default=["runs/unclip-decoder", "runs/unclip-prior"],
        help="training run folders whose summary.json gives the training time",
    )
    p.add_argument("--print-only", action="store_true", help="print the tables of the metrics.json in --out again")
    protocol.add_arguments(p)
    args = p.parse_args()
    if args.print_only:
        print(report(json.loads((Path(args.out) / "metrics.json").read_text()), args.out))
        return

    import torch  # here: --print-only needs neither torch nor the pipeline

    import clipkit
    from clipkit.io import write_json
    from clipkit.shapes.unclip_eval import evaluate_unclip
    from clipkit.shapes.world import generate

    torch.set_num_threads(args.threads)
    start = time.time()
    pipe = clipkit.UnCLIP.load(args.pipeline)
    samplers = {
        f"flow-{args.steps}": ("flow", args.steps, args.num),
        "ddpm-1000": ("ddpm", 1000, args.ddpm_images),
        f"ddim-{args.steps}-on-{args.ddpm_images}": ("ddim", args.steps, args.ddpm_images),
    }
    with protocol.CpuWindow() as window:
        m = evaluate_unclip(
            pipe,
            args.out,
            num=args.num,
            steps=args.steps,
            decoder_guidance=args.decoder_guidance,
            prior_guidance=args.prior_guidance,
            samplers=samplers,
        )
    m["evaluation_foreign_cores"] = window.foreign_cores
    timed = pipe.clip.encode_images([s.image for s in generate("val", args.time_images, seed=7)])
    m["sampler_speed"] = sampler_speed(pipe, timed, args)
    training = {}
    for run in args.runs:
        f = Path(run) / "summary.json"
        if f.is_file():
            s = json.loads(f.read_text())
            training[run] = {k: s.get(k) for k in ("steps", "train_seconds", "embed_seconds", "params")}
    m["training"] = training
    m["benchmark_seconds"] = round(time.time() - start, 1)
    write_json(Path(args.out) / "metrics.json", m)
    text = report(m, args.out)
    print(text)
    path = protocol.write_results("unclip", {"args": vars(args), "metrics": m}, text)
    print(f"written: {path} and {path.with_suffix('.md')}")


def sampler_speed(pipe, emb, args) -> dict:
    """Seconds per image of each sampler decoding the same embeddings, interleaved; speed-up over DDPM-1000."""
    contenders = {
        f"flow-{args.steps}": ("flow", args.steps),
        f"ddim-{args.steps}": ("ddim", args.steps),
        "ddpm-1000": ("ddpm", 1000),
    }

    def run(kind: str, steps: int) -> dict:
        t0 = time.perf_counter()
        pipe.decode(emb, steps=steps, sampler=kind, guidance_scale=args.decoder_guidance, seed=0, output="tensor")
        return {"s_per_image": (time.perf_counter() - t0) / len(emb)}

    run("ddim", 2)  # warm-up, untimed
    runs = protocol.interleave(
        {k: (lambda v=v: run(*v)) for k, v in contenders.items()}, rounds=args.rounds, strict=args.strict
    )
    speedup = {k: runs.ratio("s_per_image", "ddpm-1000", k) for k in contenders}
    rows = [
        [name, cell, protocol.median_range(speedup[name], "x"), spread, clean]
        for name, cell, spread, clean in protocol.contender_rows(runs, "s_per_image")
    ]
    return {
        "images": len(emb),
        "rounds": args.rounds,
        "summary": runs.summary("s_per_image"),
        "speedup_over_ddpm_1000": speedup,
        "contended_windows": runs.contended_windows(),
        "table_rows": rows,
    }


def _method_row(label: str, m: dict | None) -> list:
    if m is None:  # a stage this pipeline does not have
        return [label, "(no upsampler in this pipeline: clipkit train-upsampler adds one)", *[""] * 11]
    a, s, f = m["agreement"], m["sharpness"], m["frechet"]
    return [
        label,
        m["image_size"],
        f"{a['mean']:.3f}",
        *(f"{a[k]:.3f}" for k in ATTRS),
        f"{s['sharpness']:.3f}",
        f"{s['palette']:.3f}",
        f"{s['edge_ratio']:.3f}",
        f"{f['ratio']:.2f}",
        f"{m['clip_agreement']['mean']:.3f}",
    ]


def target_rows(m: dict) -> list[list]:
    """[measure, value, target, "ok" | "MISSED"] of one evaluate_unclip metrics dict against TARGETS."""
    t2i, inv, hat = m["text_to_image"], m["inversion"], m["hat_arithmetic"]
    got = {
        "inversion: worst attribute": min(inv["agreement"][a] for a in (*ATTRS, "background")),
        "text->prior->decoder: mean": t2i["with_prior"]["mean"],
        "prior beats direct by": t2i["with_prior"]["mean"] - t2i["direct_text_embedding"]["mean"],
        "sharpness 32 px (text->image)": t2i["methods"]["with_prior"]["sharpness"]["sharpness"],
        "Frechet / floor (text->image)": t2i["methods"]["with_prior"]["frechet"]["ratio"],
        "hat arithmetic judged with hat": hat["judged_wearing_hat"],
    }
    up, bic = t2i["methods"].get("with_prior_upsampled"), t2i["methods"]["with_prior_bicubic_64"]
    if up is not None:  # the cascade: >= 0.9 x real 64 px, clearly above bicubic
        got["sharpness 64 px cascade"] = up["sharpness"]["sharpness"]
        got["cascade sharpness over bicubic"] = up["sharpness"]["sharpness"] - bic["sharpness"]["sharpness"]
    rows = []
    for k, v in got.items():
        t, op = TARGETS[k]
        ok = v >= t if op == ">=" else v > t if op == ">" else v <= t
        rows.append([k, f"{v:.3f}", f"{op} {t:.2f}", "ok" if ok else "MISSED"])
    return rows


def report(m: dict, out: str) -> str:
    """The Markdown tables and notes of one run's metrics (what main() measured, or a saved metrics.json)."""
    t2i, inv, hat = m["text_to_image"], m["inversion"], m["hat_arithmetic"]
    fd = t2i["methods"]["with_prior"]["frechet"]
    lines = [
        f"**unCLIP on held-out shapes, judged by the independent shapes judge** — {m['judge']['summary']}",
        "",
        f"Text -> image, {fd['num']} captions naming {', '.join(ATTRS)}: the judge's agreement with the "
        f"caption (mean and per attribute), sharpness (1.0 = real renders; palette x edge ratio), Frechet "
        f"distance in the judge's features / the real-vs-real floor ({fd['floor']:.2f} for two disjoint sets "
        f"of {fd['num']} real images), CLIP-judged agreement last. Seeded: the same figures every run.",
        "",
    ]
    headers = ["method", "px", "mean", *ATTRS, "sharpness", "palette", "edge", "FD / floor", "CLIP-judged"]
    lines.append(
        protocol.markdown_table(headers, [_method_row(label, t2i["methods"].get(key)) for key, label in METHODS])
    )
    rows = target_rows(m)
    lines += ["**Targets**", "", protocol.markdown_table(["measure", "value", "target", ""], rows)]
    div = t2i["diversity"]
    notes = [
        f"diversity over {div['samples_per_prompt']} samples of each of {div['prompts']} prompts: pixel distance "
        f"{div['generated']['pixel_distance']:.3f} (real renders {div['real']['pixel_distance']:.3f}), distinct "
        f"backgrounds {div['generated']['distinct']['background']:.2f} "
        f"(real {div['real']['distinct']['background']:.2f})",
        f"inversion: judge agreement with the source's attributes {inv['agreement']['mean']:.3f} ("
        + ", ".join(f"{a} {inv['agreement'][a]:.3f}" for a in (*ATTRS, "background"))
        + f"); sharpness {inv['sharpness']['sharpness']:.3f}; Frechet / floor {inv['frechet']['ratio']:.2f}; "
        f"CLIP-judged agreement {inv['clip']['agreement']['mean']:.3f}, cosine {inv['clip']['cosine']:.3f}",
        f"hat arithmetic: {hat['judged_wearing_hat']:.3f} judged wearing a hat by the judge (without the vector "
        f"{hat['baseline_decoded_without_vector']:.3f}); other attributes kept "
        f"{hat['other_attributes_kept']['mean']:.3f}; CLIP-judged {hat['clip']['judged_wearing_hat']:.3f}",
    ]
    notes += [
        f"guidance {r['scale']:.1f}: agreement {r['agreement']:.3f}, sharpness {r['sharpness']:.3f}, "
        f"diversity {r['diversity']:.4f}"
        for r in m["guidance_sweep"]
    ]
    lines += ["**Inversion, arithmetic, guidance**", "", *(f"- {n}" for n in notes), ""]
    rows = [
        [name, s["num"], f"{s['agreement']:.3f}", f"{s['sharpness']:.3f}", f"{s['cosine']:.3f}"]
        for name, s in m["samplers"].items()
    ]
    lines += [
        "**Samplers: quality** (seeded; images decoded from held-out embeddings)",
        "",
        protocol.markdown_table(["sampler", "images", "judge agreement", "sharpness", "CLIP cosine"], rows),
    ]
    speed = m.get("sampler_speed")
    if speed:
        lines += [
            f"**Samplers: speed** — {speed['images']} images a run, decoder guidance on; seconds per image, "
            f"median over {speed['rounds']} interleaved round(s) with its range; speed-up over DDPM-1000 paired "
            f"round by round.",
            "",
            protocol.markdown_table(
                ["sampler", "s / image", "speed-up", "spread", "clean rounds"], speed["table_rows"]
            ),
        ]
    training = m.get("training", {})
    total = sum((t.get("train_seconds") or 0) + (t.get("embed_seconds") or 0) for t in training.values())
    foreign = m.get("evaluation_foreign_cores")
    lines.append(
        f"Training time (train + embed) of {list(training)}: {total / 60:.1f} min; benchmark "
        f"{m['benchmark_seconds']:.0f} s"
        + (
            f"; other processes took {foreign:.2f} cores on average during the evaluation"
            if foreign is not None
            else ""
        )
        + f"; outputs in {out}\n"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
