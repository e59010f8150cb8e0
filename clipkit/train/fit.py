"""`clipkit fit`: image-caption shards -> CLIP -> prior -> decoder (-> upsampler) -> a judged report.

    clipkit fit --train-data data/train --val-data data/val --out runs/fit --time-budget 45m --image-size 64
    clipkit fit --train-data data/train --out runs/fit --clip runs/my-clip/model     # start from a CLIP
    fit(FitConfig(train_data="data/train", out="runs/fit", time_budget=2700))        # the same from Python

Every stage trains with the one Trainer (resume "latest") into OUT/<stage>/; the prior, the decoder and the
upsampler collect in OUT/pipeline (an UnCLIP folder). A stage writes OUT/<stage>/done.json last
(clipkit.io.stages), so the same command after a kill redoes only what did not finish.

After the CLIP, the other stages train side by side in LANES, one process each (clipkit.perf.side_by_side):
the decoder in one, the prior then the upsampler in the other, the cores divided between them. At these
model sizes a step is mostly per-kernel overhead: the icon set's decoder averaged 7.2 steps/s alone on two threads,
6.5 on one beside another decoder and 5.3 beside the upsampler, so the second core is worth a second model,
not a much faster decoder (a 45-minute fit: 1.17x the decoder's steps, 1.6x the upsampler's, 2.6x the prior's).

The time budget goes to the CLIP first (its STAGE_SHARES share); what is left is each lane's, split over the
lane's stages in proportion to STAGE_SHARES, each stage getting its share of what is left when it starts (a
stage that ends early hands its time on). Without a budget each stage runs its recipe's steps
(clipkit/presets/recipes/images-*.json); `max_steps` caps every stage either way.

The report (OUT/report.html) shows what a person judges by eye and the figures that do not depend on the
models that made the pictures: inversion pairs of held-out images with the pixel nearest-source
identification (is a decoded image's nearest real image by L2 its own source, among 100?), noise and
sharpness against real images, and text->image grids for held-out captions (and for unseen ones, with
--unseen-data). With --judge (a classifier from `clipkit judge train`, never trained on generated images)
it adds the judge's identification of the intended label, with its own accuracy on the real images beside it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import clipkit
from clipkit.config import load_config
from clipkit.data.shards import read_samples
from clipkit.evaluation.image_stats import nearest_source, noise_sharpness
from clipkit.evaluation.judge import Judge
from clipkit.images import make_grid
from clipkit.io import claim_output, write_json
from clipkit.io.report import Figure, Section, write_report
from clipkit.io.stages import MARKER, run_stage
from clipkit.perf import side_by_side
from clipkit.retrieval.embeddings.reader import EmbeddingFolder
from clipkit.retrieval.embeddings.writer import write_embeddings
from clipkit.retrieval.index.core import EmbeddingIndex
from clipkit.train.clip import train_clip
from clipkit.train.config import (
    ClipTrainConfig,
    DecoderTrainConfig,
    PriorTrainConfig,
    UnclipTrainConfig,
    UpsamplerTrainConfig,
)
from clipkit.train.loop import UNBOUNDED_STEPS
from clipkit.train.unclip import train_decoder, train_prior, train_upsampler
from clipkit.unclip.images import pil_to_tensor, to_pil
from clipkit.unclip.storage import claim_pipeline

FIT_FORMAT = "clipkit-fit"
RECIPES = Path(__file__).resolve().parents[1] / "presets" / "recipes"
STAGE_SHARES = {"clip": 0.30, "prior": 0.10, "decoder": 0.45, "upsampler": 0.15}
# The CLIP at either --image-size: on the icon set at equal time, small-32px beat small-64px on every
# retrieval figure (docs/experiments/icons-judge.md); the decoder paints at 32 px and the upsampler takes
# 32 -> 64 from pixels, so the CLIP's input size does not bound the output size.
CLIP_ARCHITECTURE = "small-32px"
IMAGE_SIZES = (32, 64)
DECODER_SIZE = 32  # the base decoder's side; 64 px comes from the upsampler
UNSEEN_READ_PER_CAPTION = 50  # samples read per unseen caption wanted (renders of one caption sit together)
LANES = (("decoder",), ("prior", "upsampler"))  # trained side by side after the CLIP, one process a lane


@dataclass
class FitConfig:
    train_data: str  # image-caption shards (a folder of .tar, a brace pattern, '::' list)
    out: str  # the run folder (new, or an earlier fit's: it resumes)
    val_data: str | None = None  # held-out shards for the report (default: the last train samples)
    unseen_data: str | None = None  # shards of captions never trained on, for the report
    image_size: int = 32  # 32: CLIP + prior + decoder; 64: a 64 px CLIP and the 32 -> 64 upsampler
    model: str | None = None  # the CLIP architecture (preset, open_clip name or JSON config)
    clip: str | None = None  # start from this CLIP (a saved directory, or an architecture with pretrained)
    pretrained: str | None = None  # open_clip weights for `clip` given as an architecture
    time_budget: float | None = None  # seconds for all training stages together
    max_steps: int | None = None  # cap on every stage's optimiser steps
    num_samples: int = 20_000  # samples the prior / decoder / upsampler read from train_data
    judge: str | None = None  # a judge folder (`clipkit judge train`) for the report
    label_field: str | None = None  # the sample JSON field the judge names (default: the judge's own)
    report_images: int = 100  # held-out images for the report's numbers
    steps: int = 50  # decoder sampling steps in the report
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(
                f"image_size={self.image_size}; expected one of {list(IMAGE_SIZES)} (32: CLIP, prior "
                f"and decoder; 64: adds the 32 -> 64 px upsampler)"
            )
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget={self.time_budget}; expected seconds > 0 (e.g. 2700 for 45 minutes)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps}; expected >= 1")
        if self.report_images < 2:
            raise ValueError(
                f"report_images={self.report_images}; expected >= 2 (pixel identification needs candidates)"
            )
        if self.pretrained and not self.clip:
            raise ValueError(
                "pretrained is set without clip; give the architecture as clip (e.g. --clip ViT-B-32 --pretrained FILE)"
            )

    def stages(self) -> list[str]:
        names = ["prior", "decoder"] + (["upsampler"] if self.image_size > DECODER_SIZE else [])
        return (["clip"] if self.clip is None else ["clip-import"]) + names


class Budget:
    """Each stage's share of the time left when it starts (STAGE_SHARES over the stages still to run)."""

    def __init__(self, total: float | None, stages: list[str]):
        self.total, self.left = total, list(stages)
        self.start = time.monotonic()

    def seconds(self, stage: str) -> float | None:
        shares = {s: STAGE_SHARES.get(s, 0.0) for s in self.left}
        if stage not in shares:
            return None
        self.left.remove(stage)
        remaining = self.remaining()
        if remaining is None or shares[stage] == 0:
            return None
        return max(1.0, remaining * shares[stage] / sum(shares.values()))

    def remaining(self) -> float | None:
        """Seconds of the budget not yet spent (None without a budget)."""
        return None if self.total is None else self.total - (time.monotonic() - self.start)


def _overrides(config: FitConfig, out: Path, stage: str, budget: float | None) -> dict:
    common = {"out_dir": str(out / stage), "resume": "latest", "seed": config.seed}
    if budget is not None:
        common["time_budget"] = budget
        common["max_steps"] = config.max_steps or UNBOUNDED_STEPS  # the budget ends the run
        common["epochs"] = UNBOUNDED_STEPS
    elif config.max_steps is not None:
        common["max_steps"] = config.max_steps
    return common


def _clip_stage(config: FitConfig, out: Path, budget: Budget) -> dict:
    model = config.model or CLIP_ARCHITECTURE
    overrides = {
        **_overrides(config, out, "clip", budget.seconds("clip")),
        "model": model,
        "train_data": config.train_data,
        "export_dir": str(out / "clip" / "model"),
    }
    if config.val_data:
        overrides["val_data"] = config.val_data
    summary = train_clip(load_config(ClipTrainConfig, RECIPES / "images-clip.json", overrides))
    ev = summary.get("eval", {})
    recall = {k: v for k, v in ev.items() if k.endswith(("t2i_r1", "t2i_r5"))}
    return {
        "summary": f"{summary['steps']} steps in {summary['train_seconds']:.0f} s "
        f"(stopped by {summary.get('stopped_by', 'steps')})"
        + "".join(f"; {k} {v:.3f}" for k, v in sorted(recall.items())[:4]),
        "model": str(out / "clip" / "model"),
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "eval": ev,
    }


def _clip_import(config: FitConfig, out: Path, budget: Budget) -> dict:
    budget.seconds("clip-import")
    source = Path(config.clip) if config.clip else None
    if source is not None and source.is_dir() and config.pretrained is None:
        return {"summary": f"the CLIP at {source}", "model": str(source.resolve()), "steps": 0, "train_seconds": 0}
    model = clipkit.load(config.clip, pretrained=config.pretrained)
    target = out / "clip-import" / "model"
    model.save(target)
    return {
        "summary": f"{config.clip} ({config.pretrained}) saved to {target}",
        "model": str(target),
        "steps": 0,
        "train_seconds": 0,
    }


def _lane(
    config: FitConfig, out: Path, stages: list[str], clip_dir: str, seconds: float | None, threads: int, force: bool
) -> dict:
    """Train `stages` one after the other in this process (one side of side_by_side), sharing `seconds`."""
    budget = Budget(seconds, stages)
    return {
        stage: run_stage(
            stage, out / stage, functools.partial(_unclip_stage, config, out, stage, clip_dir, budget, threads), force
        )
        for stage in stages
    }


def _unclip_stage(config: FitConfig, out: Path, stage: str, clip_dir: str, budget: Budget, threads: int) -> dict:
    trainers: dict[str, tuple[type[UnclipTrainConfig], Callable[..., dict]]] = {
        "prior": (PriorTrainConfig, train_prior),
        "decoder": (DecoderTrainConfig, train_decoder),
        "upsampler": (UpsamplerTrainConfig, train_upsampler),
    }
    cls, fn = trainers[stage]
    overrides = {
        **_overrides(config, out, stage, budget.seconds(stage)),
        "clip": clip_dir,
        "train_data": config.train_data,
        "pipeline_dir": str(out / "pipeline"),
        "num_threads": threads,
    }
    if stage != "upsampler":  # its recipe reads fewer (64 px targets; each is its own condition)
        overrides["num_samples"] = config.num_samples
    summary = fn(load_config(cls, RECIPES / f"images-{stage}.json", overrides))
    return {
        "summary": f"{summary['steps']} steps in {summary['train_seconds']:.0f} s "
        f"(stopped by {summary.get('stopped_by', 'steps')})",
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        **{k: v for k, v in summary.items() if k.startswith(("val_", "final_")) and isinstance(v, (int, float))},
    }


# ----------------------------------------------------------------------------- the report


def _held_out(config: FitConfig) -> list[tuple]:
    """(image, caption, metadata) of the report's held-out images: val_data, else the last train samples
    (which the prior / decoder held out as their validation rows, as they read the first num_samples)."""
    fields = ("image", "text", "json")
    if config.val_data:
        rows = read_samples(config.val_data, fields, config.report_images)
    else:
        rows = read_samples(config.train_data, fields)[-config.report_images :]
    if len(rows) < 2:
        raise ValueError(
            f"{len(rows)} readable held-out sample(s) in {config.val_data or config.train_data!r}; "
            f"the report needs >= 2 (give --val-data shards)"
        )
    return rows


def _judged(judge: Judge, images: torch.Tensor, metas: list, field: str | None, prefix: str) -> dict:
    """The judge's identification of each image's intended label (its own class list; unknown labels left out)."""
    field = field or judge.fields[0]
    row = judge.identify(images, {field: [m.get(field) if isinstance(m, dict) else None for m in metas]})[field]
    return {f"{prefix}judge_{k}": row[k] for k in ("top1", "top5", "chance", "num") if k in row}


def report(config: FitConfig, out: Path, results: dict) -> Path:
    """Decode held-out images from their CLIP embeddings and draw their captions; measure and write report.html."""
    figures = out / "report"
    figures.mkdir(exist_ok=True)
    pipe = clipkit.UnCLIP.load(out / "pipeline")
    upsample = config.image_size > DECODER_SIZE
    rows = _held_out(config)
    images, captions, metas = [r[0] for r in rows], [str(r[1]) for r in rows], [r[2] for r in rows]
    real = pil_to_tensor([im.convert("RGB").resize((config.image_size,) * 2) for im in images])
    emb = pipe.clip.encode_images(images)
    decoded = pipe.decode(emb, steps=config.steps, seed=config.seed, output="tensor", upsample=upsample)
    drawn = pipe.generate(
        captions[:16], num_images=1, steps=config.steps, seed=config.seed, output="tensor", upsample=upsample
    )
    inversion = {
        "pixel_nearest_source_top1": nearest_source(decoded, real, list(range(len(real))))["top1"],
        "pixel_chance": 1 / min(100, len(real)),
        **{f"inversion_{k}": v for k, v in noise_sharpness(decoded, real).items() if k in ("noise", "sharpness")},
    }
    text = {f"text_{k}": v for k, v in noise_sharpness(drawn, real).items() if k in ("noise", "sharpness")}
    if config.judge:
        judge = Judge.load(config.judge)
        inversion.update(_judged(judge, real, metas, config.label_field, "real_"))  # the judge's own accuracy
        inversion.update(_judged(judge, decoded, metas, config.label_field, "inversion_"))
        inversion["inversion_frechet_ratio"] = judge.frechet(decoded, real)["ratio"]
        text.update(_judged(judge, drawn, metas[: len(drawn)], config.label_field, "text_"))
    grid = [im for pair in zip(_pil(real[:16]), _pil(decoded[:16])) for im in pair]
    make_grid(grid, columns=8, scale=2).save(figures / "inversion.png")
    make_grid(_pil(drawn), columns=8, scale=2).save(figures / "text_to_image.png")
    sections = [
        Section(
            "Inversion",
            "Held-out images (left of each pair) and what the decoder paints from their CLIP image "
            "embedding (right). The pixel identification asks whether a decoded image's nearest real image by "
            "L2 is its own source among up to 100 held-out images; noise and sharpness are ratios to the real "
            "images (1.0 = real; speckle raises noise, blur lowers sharpness).",
            figures=[Figure("report/inversion.png", "real | decoded, in pairs")],
            metrics=inversion,
        ),
        Section(
            "Text to image",
            "Held-out captions through the prior and the decoder: " + "; ".join(captions[:16]),
            figures=[Figure("report/text_to_image.png", "one image per caption")],
            metrics=text,
        ),
    ]
    if config.unseen_data:
        # 16 distinct captions: a split holds several renders of each, one after another.
        texts = (str(r[0]) for r in read_samples(config.unseen_data, ("text",), 16 * UNSEEN_READ_PER_CAPTION))
        unseen = list(dict.fromkeys(texts))[:16]
        if unseen:
            make_grid(
                _pil(
                    pipe.generate(
                        unseen, num_images=1, steps=config.steps, seed=config.seed, output="tensor", upsample=upsample
                    )
                ),
                columns=8,
                scale=2,
            ).save(figures / "unseen.png")
            sections.append(
                Section(
                    "Unseen captions",
                    "Captions never trained on: " + "; ".join(unseen),
                    figures=[Figure("report/unseen.png", "one image per unseen caption")],
                )
            )
    sections.append(
        Section(
            "Stages",
            "Each stage's training (steps, seconds, what stopped it).",
            table=[
                {
                    "stage": k,
                    "steps": v.get("steps", 0),
                    "seconds": v.get("train_seconds", 0),
                    "summary": v.get("summary", ""),
                }
                for k, v in results.items()
            ],
        )
    )
    metrics = {**inversion, **text}
    write_json(out / "report.json", {"metrics": metrics, "captions": captions[:16]})
    return write_report(
        out / "report.html",
        "clipkit fit",
        sections,
        summary=f"{len(real)} held-out images; pixel identification "
        f"{inversion['pixel_nearest_source_top1']:.2f} (chance {inversion['pixel_chance']:.2f})",
    )


def _pil(x: torch.Tensor) -> list:
    return to_pil(x)


def _index_stage(config: FitConfig, out: Path, clip_dir: str) -> dict:
    """Embed the held-out (else the training) shards and build an index, so `clipkit serve` can search them."""
    model = clipkit.load(clip_dir)
    shards = config.val_data or config.train_data
    write_embeddings(model, out / "index" / "embeddings", shards=shards, model_source=clip_dir)
    index = EmbeddingIndex.build(EmbeddingFolder(out / "index" / "embeddings"), kind="auto", model=model)
    index.save(out / "index" / "index")
    return {
        "summary": f"{len(index)} images of {shards} in a {index.kind} index",
        "index": str(out / "index" / "index"),
    }


def fit(config: FitConfig, force: bool = False) -> dict:
    """Run (or resume) every stage into config.out, write report.html, print the serve command; the summary."""
    config.validate()
    inputs = [config.train_data] + [d for d in (config.val_data, config.unseen_data) if d]
    out = claim_output(config.out, FIT_FORMAT, inputs=inputs, overwrite=config.overwrite)
    write_json(out / "fit.json", {k: v for k, v in vars(config).items()})
    stages = config.stages()
    # The budget is shared by the stages still to train (a finished one, on a re-run, takes none).
    budget = Budget(config.time_budget, [s for s in stages if force or not (out / s / MARKER).is_file()])
    results: dict[str, dict] = {}
    first = stages[0]
    make_clip = _clip_stage if first == "clip" else _clip_import
    results[first] = run_stage(first, out / first, lambda: make_clip(config, out, budget), force)
    clip_dir = results[first]["model"]
    todo = [s for s in stages[1:] if force or not (out / s / MARKER).is_file()]
    lanes = [lane for lane in ([s for s in lane if s in todo] for lane in LANES) if lane]
    trained: dict[str, dict] = {}
    if lanes:
        # Claimed once here: the trainers, starting side by side, would each mark a new folder at once.
        claim_pipeline(out / "pipeline", clipkit.load(clip_dir), inputs=[clip_dir, config.train_data])
        threads = max(1, (os.cpu_count() or 1) // len(lanes))
        remaining = budget.remaining()
        calls = [(_lane, (config, out, lane, clip_dir, remaining, threads, force)) for lane in lanes]
        trained = {stage: r for lane in side_by_side(calls) for stage, r in lane.items()}
    for stage in stages[1:]:  # a stage done before is reported as run_stage reads it back
        results[stage] = trained[stage] if stage in trained else run_stage(stage, out / stage, dict, force)
    indexed = run_stage("index", out / "index", lambda: _index_stage(config, out, clip_dir), force)
    page = report(config, out, results)
    summary = {"stages": results, "index": indexed, "report": str(page)}
    write_json(out / "summary.json", summary)
    print(f"report: {page}")
    print(f"serve it: clipkit serve --index {indexed['index']} --model {clip_dir} --unclip {out / 'pipeline'}")
    return summary
