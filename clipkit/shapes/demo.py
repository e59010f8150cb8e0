"""The demo: the whole shapes loop, resumable, ending in report.html.

    shapes shards -> train a CLIP -> zero-shot report -> embeddings + FAISS index + searches
    -> hat-vector experiment -> unCLIP prior + decoder -> generation grids -> spiral lab -> report

Each stage writes into its own sub-folder of the output directory and a
`done.json` marker last (atomically); a stage whose marker exists is skipped on
re-runs, so an interrupted demo resumes where it stopped. `--quick` runs the
same chain with tiny settings (the tests' end-to-end case).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import clipkit
from clipkit.config import load_config
from clipkit.data.shards import read_samples
from clipkit.images import make_grid
from clipkit.io import claim_output, write_json
from clipkit.io.stages import run_stage
from clipkit.labs.genlab import GenLabConfig, run_gen_lab
from clipkit.labs.genlab.priors import compare_priors
from clipkit.labs.genlab.report import REPRODUCED, claims
from clipkit.labs.spiral import run_spiral_lab
from clipkit.perf import side_by_side, torch_threads
from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.retrieval.embeddings.writer import write_embeddings
from clipkit.retrieval.index.core import EmbeddingIndex
from clipkit.shapes import config_path
from clipkit.shapes.evaluate import attribute_accuracy, clip_evaluator, hat_vector_experiment
from clipkit.shapes.report import write_demo_report
from clipkit.shapes.unclip_eval import evaluate_unclip
from clipkit.shapes.world import ShapeAttributes, attribute_classes, generate, render, write_split
from clipkit.train.clip import ClipTrainConfig, train_clip
from clipkit.train.unclip import (
    DecoderTrainConfig,
    PriorTrainConfig,
    UpsamplerTrainConfig,
    load_clip,
    train_decoder,
    train_prior,
    train_upsampler,
)
from clipkit.unclip.pipeline import to_pil
from clipkit.unclip.storage import claim_pipeline

DEMO_FORMAT = "clipkit-demo"  # the marker of a folder the demo writes into

ATTRIBUTE_ORDER = ("shape", "color", "size", "position", "hat")


@dataclass(frozen=True)
class DemoSettings:
    train_samples: int
    val_samples: int
    holdout_samples: int
    hat_pairs: int  # images (pairs x 2)
    shard_size: int
    clip_config: str  # a packaged recipe (clipkit/shapes/recipes), paths replaced by the demo's
    clip_overrides: dict
    eval_samples: int  # val / holdout images for the zero-shot report
    unclip_quick: bool  # tiny prior / decoder configs (configs/*-tiny.json)
    prior_overrides: dict
    decoder_overrides: dict
    upsampler_overrides: dict  # the cascade's super-resolution stage (32 -> 64 px)
    upsampler_samples: int  # 64 px train images written for it
    unclip_eval_images: int
    unclip_steps: int
    genlab_budget: float | None = None  # training seconds per model of the generation lab; None: not run
    genlab_prior_steps: int = 300  # steps of each prior in the AR-vs-diffusion prior comparison

    @classmethod
    def for_mode(cls, quick: bool) -> DemoSettings:
        if quick:
            return cls(
                train_samples=3_000,
                val_samples=500,
                holdout_samples=300,
                hat_pairs=100,
                shard_size=1_000,
                clip_config="shapes-tiny.json",
                clip_overrides={
                    "epochs": 10,
                    "eval_every": None,
                    "checkpoint_every": None,
                    "val_max_samples": 500,
                    "warmup_steps": 10,
                    "num_threads": 1,
                },
                eval_samples=500,
                unclip_quick=True,
                prior_overrides={"num_samples": 1000, "num_threads": 1, "max_steps": 200},
                decoder_overrides={"num_samples": 1000, "max_steps": 300, "num_threads": 1},
                upsampler_overrides={"num_samples": 500, "max_steps": 60, "num_threads": 1},
                upsampler_samples=500,
                unclip_eval_images=8,
                unclip_steps=20,
            )
        return cls(
            train_samples=20_000,
            val_samples=2_000,
            holdout_samples=1_000,
            hat_pairs=400,
            shard_size=5_000,
            # The preset's 9 bf16 epochs (holdout shape 0.891 after 6, 0.965 after 9).
            clip_config="shapes-small.json",
            clip_overrides={"epochs": 9},
            eval_samples=1_000,
            unclip_quick=False,
            # 10k of the train split is plenty for prior and decoder (they see ~50k-380k samples in their
            # step budgets) and halves the time spent embedding. One thread each: decoder then prior in one
            # process beside the upsampler in another (stage_unclip). Steps below the presets' (prior 4,000,
            # decoder 4,000, upsampler 2,400) are the budget: docs/benchmarks/demo.md has the stage table and
            # the judged figures they reach.
            prior_overrides={"num_samples": 10_000, "num_threads": 1, "max_steps": 3_000},
            decoder_overrides={"num_samples": 10_000, "num_threads": 1, "max_steps": 1_800},
            upsampler_overrides={"num_samples": 5_000, "num_threads": 1, "max_steps": 1_450},
            upsampler_samples=5_000,
            unclip_eval_images=32,
            unclip_steps=50,
        )


# ----------------------------------------------------------------------------- stages


def stage_data(out: Path, s: DemoSettings) -> dict:

    counts = {}
    for split, num, seed in (
        ("train", s.train_samples, 0),
        ("val", s.val_samples, 1),
        ("holdout", s.holdout_samples, 2),
        ("hat_pairs", s.hat_pairs, 3),
    ):
        stats = write_split(out / split, split=split, num=num, seed=seed, shard_size=s.shard_size, progress=True)
        counts[split] = stats["count"]
    examples = list(generate("train", 32, seed=0))
    make_grid([e.image for e in examples], columns=8, scale=3).save(out / "examples.png")
    write_json(out / "examples.json", [{"caption": e.caption} for e in examples])
    return {
        "summary": ", ".join(f"{k} {v}" for k, v in counts.items()),
        "counts": counts,
        "captions": [e.caption for e in examples[:8]],
    }


def _shards(folder: Path) -> str:
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"no shards in {str(folder)!r}; run the data stage first")
    return "::".join(str(t) for t in tars)


def stage_clip(out: Path, s: DemoSettings, data: Path) -> dict:

    config_file = config_path(s.clip_config)
    overrides = {
        "train_data": _shards(data / "train"),
        "val_data": _shards(data / "val"),
        "holdout_data": _shards(data / "holdout"),
        "out_dir": str(out),
        "export_dir": str(out / "model"),
        "resume": "latest",
        **s.clip_overrides,
    }
    config = load_config(ClipTrainConfig, config_file, overrides)
    summary = train_clip(config, evaluators=(clip_evaluator,))
    ev = summary.get("eval", {})
    worst_val = min(ev.get(f"val/zs_{a}", 0.0) for a in ATTRIBUTE_ORDER)
    worst_holdout = min(ev.get(f"holdout/zs_{a}", 0.0) for a in ATTRIBUTE_ORDER)
    return {
        "summary": f"{config.model} trained {summary['steps']} steps in {summary['train_seconds']:.0f} s; "
        f"zero-shot worst attribute: val {worst_val:.3f}, holdout {worst_holdout:.3f}",
        "model": str(out / "model"),
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "eval": ev,
        "skipped": summary.get("skipped_samples", 0),
    }


def stage_zeroshot(out: Path, s: DemoSettings, data: Path, model_dir: Path) -> dict:

    model = clipkit.load(model_dir)
    table = []
    for split in ("val", "holdout"):
        images, metas = zip(*read_samples(data / split, ("image", "json"), s.eval_samples))
        embeddings = model.encode_images(list(images), progress=True).numpy()
        accuracy = attribute_accuracy(model, embeddings, metas, ATTRIBUTE_ORDER, confusion_dir=out, prefix=f"{split}_")
        table.append({"split": split, "images": len(images), **{a: round(v, 4) for a, v in accuracy.items()}})
    val, holdout = table
    return {
        "summary": "zero-shot top-1 "
        + "; ".join(f"{r['split']}: " + ", ".join(f"{a} {r[a]:.3f}" for a in ATTRIBUTE_ORDER) for r in table),
        "table": table,
        "classes": {a: list(attribute_classes(a)) for a in ATTRIBUTE_ORDER},
        "worst_val": min(val[a] for a in ATTRIBUTE_ORDER),
        "worst_holdout": min(holdout[a] for a in ATTRIBUTE_ORDER),
    }


SEARCH_QUERIES = (
    "a red circle",
    "a blue star wearing a hat",
    "a small green square on the left",
    "a purple heart at the bottom",
)


def stage_retrieval(out: Path, s: DemoSettings, data: Path, model_dir: Path) -> dict:

    model = clipkit.load(model_dir)
    emb_dir = out / "embeddings"
    write_embeddings(model, emb_dir, shards=_shards(data / "val"), overwrite=True, model_source=str(model_dir))
    folder = EmbeddingFolder(emb_dir)
    start = time.time()
    index = EmbeddingIndex.build(folder, kind="auto", model=model)
    build_seconds = time.time() - start
    index.save(out / "index")
    searches = []
    for i, query in enumerate(SEARCH_QUERIES):
        scores, ids = index.search_text(model, query, k=8)
        rows = index.lookup(ids[0])
        images = [im for im in (index.image(r) for r in rows) if im is not None]
        path = f"search_{i}.png"
        make_grid(images, columns=8, scale=3).save(out / path)
        searches.append(
            {
                "query": query,
                "figure": path,
                "top_captions": [r.get("caption") for r in rows[:3]],
                "top_score": float(scores[0][0]),
            }
        )
    return {
        "summary": f"{folder.count} val images embedded, {index.kind} index built in {build_seconds:.1f} s, "
        f"{len(searches)} text searches",
        "count": folder.count,
        "kind": index.kind,
        "searches": searches,
    }


def stage_hat_vector(out: Path, s: DemoSettings, data: Path, model_dir: Path) -> dict:
    import numpy as np

    model = clipkit.load(model_dir)
    result = hat_vector_experiment(model, str(data / "hat_pairs"))
    np.save(out / "hat_vector.npy", result.pop("hat_vector"))
    result.pop("ranks", None)
    return {
        "summary": f"'hat' is the nearest word for {result['top1_rate']:.1%} of {result['pairs']} pairs "
        f"(mean rank {result['mean_rank']:.2f}, mean cosine {result['mean_cosine']:.3f})",
        **result,
        "hat_vector": str(out / "hat_vector.npy"),
    }


def stage_unclip(out: Path, s: DemoSettings, data: Path, model_dir: Path, hat_vector: Path) -> dict:
    """Train the prior, the decoder and the upsampler (the cascade's 32 -> 64 px stage) on the frozen CLIP,
    then draw and measure (clipkit.shapes.unclip_eval)."""

    suffix = "-tiny" if s.unclip_quick else ""
    common = {
        "clip": str(model_dir),
        "train_data": str(data / "train"),
        "pipeline_dir": str(out / "pipeline"),
        "resume": "latest",
    }
    times, start = {}, time.time()
    # The super-resolution stage learns from 64 px renders: each is its own target, its 32 px area average the input.
    data64 = out / "train-64"
    if not (data64 / "manifest.json").is_file():
        write_split(data64, split="train", num=s.upsampler_samples, seed=0, shard_size=5_000, image_size=64)
    configs = {
        name: load_config(cls, config_path(f"shapes-{name}{suffix}"), {**common, "out_dir": str(out / name), **o})
        for name, cls, o in (
            ("prior", PriorTrainConfig, s.prior_overrides),
            ("decoder", DecoderTrainConfig, s.decoder_overrides),
            ("upsampler", UpsamplerTrainConfig, {**s.upsampler_overrides, "train_data": str(data64)}),
        )
    }
    # Claimed here, before the trainers start side by side (each would otherwise mark a new folder at once).
    claim_pipeline(common["pipeline_dir"], load_clip(str(model_dir)), inputs=[str(model_dir), common["train_data"]])
    # Two one-thread processes side by side (decoder then prior | upsampler) do more work a second than one
    # process on two threads: a decoder step ran at 6.6 steps/s beside the upsampler against 9.5 alone on two
    # threads (1.39x the pair's throughput; docs/benchmarks/demo.md has the stage table).
    (decoder, prior), (upsampler,) = side_by_side(
        [
            (in_turn, ((train_decoder, configs["decoder"]), (train_prior, configs["prior"]))),
            (in_turn, ((train_upsampler, configs["upsampler"]),)),
        ]
    )
    times["training"], start = round(time.time() - start, 1), time.time()
    pipe = clipkit.UnCLIP.load(out / "pipeline")
    metrics = evaluate_unclip(
        pipe,
        out / "samples",
        num=s.unclip_eval_images,
        steps=s.unclip_steps,
        samplers={"flow": ("flow", s.unclip_steps, s.unclip_eval_images)},
    )
    cascade_figure(pipe, out / "samples" / "cascade.png", steps=s.unclip_steps)
    times["evaluation"] = round(time.time() - start, 1)
    # Arithmetic to pixels with the hat vector measured by the hat-vector stage.

    source = out / "samples" / "blue_circle.png"
    render(ShapeAttributes("circle", "blue", "large", "center", "white", False)).save(source)
    with_hat = pipe.render_expression(f'img:"{source}"', num_images=7, add_vector=str(hat_vector), seed=0)
    make_grid(
        [render(ShapeAttributes("circle", "blue", "large", "center", "white", False))] + list(with_hat),
        columns=8,
        scale=3,
    ).save(out / "samples" / "blue_circle_plus_hat_vector.png")
    t2i = metrics["text_to_image"]
    return {
        "summary": f"decoder {decoder.get('train_seconds', 0):.0f} s then prior {prior.get('train_seconds', 0):.0f} s "
        f"beside upsampler {upsampler.get('train_seconds', 0):.0f} s: {times['training']:.0f} s "
        f"of training; judged by the shapes judge: inversion agreement "
        f"{metrics['inversion']['agreement']['mean']:.3f} (sharpness "
        f"{metrics['inversion']['sharpness']['sharpness']:.2f}), "
        f"text->image {t2i['with_prior']['mean']:.3f} with the prior vs "
        f"{t2i['direct_text_embedding']['mean']:.3f} direct, hat arithmetic "
        f"{metrics['hat_arithmetic']['judged_wearing_hat']:.3f}",
        "prior": {k: v for k, v in prior.items() if isinstance(v, (int, float, str))},
        "decoder": {k: v for k, v in decoder.items() if isinstance(v, (int, float, str))},
        "upsampler": {k: v for k, v in upsampler.items() if isinstance(v, (int, float, str))},
        "times": times,
        "metrics": metrics,
        "pipeline": str(out / "pipeline"),
    }


CASCADE_PROMPTS = (
    "a red circle wearing a hat",
    "a small blue star on the left",
    "a large green heart",
    "a purple hexagon at the bottom",
)


def in_turn(*calls: tuple) -> list:
    """(fn, config) pairs run one after the other in this process; their results (one side of side_by_side)."""
    return [fn(config) for fn, config in calls]


def cascade_figure(pipe, path: Path, steps: int = 50) -> None:
    """Rows: the 32 px decoder output (pixels doubled), bicubic to 64 px, and the upsampler's 64 px."""
    import torch.nn.functional as F

    low = pipe.generate(list(CASCADE_PROMPTS), num_images=2, steps=steps, seed=0, output="tensor")
    rows = [
        F.interpolate(low, scale_factor=2, mode="nearest"),
        F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1),
        pipe.upsample(low, seed=0, output="tensor"),
    ]
    make_grid([im for row in rows for im in to_pil(row)], columns=len(low), scale=2).save(path)


def stage_spiral(out: Path, s: DemoSettings) -> dict:

    # The spiral models are tiny MLPs: one thread is fastest (several only add synchronisation).
    with torch_threads(1):
        metrics = run_spiral_lab(out, quick=s.unclip_quick)
    sam = metrics["samplers"]
    summary = ", ".join(f"{name} coverage {r['coverage']:.2f}" for name, r in sam.items())
    return {"summary": summary, "metrics": metrics}


def stage_genlab(out: Path, s: DemoSettings, clip_dir: Path, pipeline: Path) -> dict:
    """Autoregression vs diffusion on images (clipkit.labs.genlab), plus unCLIP's AR prior against the
    diffusion prior on the demo's CLIP and decoder."""

    budget = s.genlab_budget
    assert budget is not None  # the stage runs only with a budget
    config = replace(GenLabConfig(), budget_seconds=budget)
    with torch_threads(config.threads):
        priors = compare_priors(str(clip_dir), out / "priors", pipeline=str(pipeline), steps=s.genlab_prior_steps)
    metrics = run_gen_lab(out, config=config, prior_comparison=priors)
    reproduced = sum(status == REPRODUCED for _, status, _ in claims(metrics))
    return {"summary": f"{reproduced} of 5 claims reproduced, {budget:.0f} s of training per model", "metrics": metrics}


# ----------------------------------------------------------------------------- running


def run_demo(
    out: str | Path, quick: bool = False, force: bool = False, genlab: float | None = None, overwrite: bool = False
) -> dict:
    """Every stage into `out`, then report.html. genlab: also run the generation lab with that many training
    seconds per model (its own stage and report section; off by default to keep the demo in budget).
    `out` must be new, empty or a previous demo's (clipkit.io.claim_output); anything else needs `overwrite`."""

    out = claim_output(out, DEMO_FORMAT, overwrite=overwrite)
    s = replace(DemoSettings.for_mode(quick), genlab_budget=genlab)
    start = time.time()
    r: dict[str, dict] = {}
    data = out / "data"
    r["data"] = run_stage("data", data, lambda: stage_data(data, s), force)
    r["clip"] = run_stage("clip", out / "clip", lambda: stage_clip(out / "clip", s, data), force)
    model_dir = Path(r["clip"]["model"])
    r["zeroshot"] = run_stage(
        "zero-shot", out / "zeroshot", lambda: stage_zeroshot(out / "zeroshot", s, data, model_dir), force
    )
    r["retrieval"] = run_stage(
        "retrieval", out / "retrieval", lambda: stage_retrieval(out / "retrieval", s, data, model_dir), force
    )
    r["hat_vector"] = run_stage(
        "hat-vector", out / "hat_vector", lambda: stage_hat_vector(out / "hat_vector", s, data, model_dir), force
    )
    r["unclip"] = run_stage(
        "unclip",
        out / "unclip",
        lambda: stage_unclip(out / "unclip", s, data, model_dir, Path(r["hat_vector"]["hat_vector"])),
        force,
    )
    r["spiral"] = run_stage("spiral", out / "spiral", lambda: stage_spiral(out / "spiral", s), force)
    if s.genlab_budget:
        r["genlab"] = run_stage(
            "gen-lab",
            out / "genlab",
            lambda: stage_genlab(out / "genlab", s, model_dir, Path(r["unclip"]["pipeline"])),
            force,
        )
    total = time.time() - start
    summary = {"seconds": round(total, 1), "quick": quick, "stages": r}
    write_json(out / "summary.json", summary)
    report = write_demo_report(out, summary)
    print(f"demo finished in {total:.0f} s; report: {report}")
    for name, result in r.items():
        print(f"  {name:<11} {result.get('summary', '')}")
    print(
        f"browse it: clipkit serve --index {out / 'retrieval' / 'index'} --model {model_dir} "
        f"--unclip {out / 'unclip' / 'pipeline'}"
    )
    return summary
