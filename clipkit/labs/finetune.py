"""Fine-tuning that keeps zero-shot: the trap and two remedies, shown on the shapes world.

    from clipkit.labs.finetune import FinetuneExperiment, QUICK, run_finetune_experiment
    result = run_finetune_experiment(FinetuneExperiment(out_dir="runs/finetune"))
    result["models"]["full"]    # {"slice": 0.97, "rest": 0.71, "per_dataset": {...}}
    # python -m clipkit.labs.finetune --out runs/finetune [--quick]

1. pretrain a CLIP on the whole world (or start from `base_model`, a saved model);
2. fine-tune it on a narrow slice (shapes of `slice_colors` only) three ways:
   every weight (`full`), the image tower frozen (`lock-image`, open_clip's
   --lock-image), the text tower frozen (`lock-text`);
3. measure zero-shot accuracy (mean over the five attributes, datasets in
   CLIP_benchmark's layout from clipkit.shapes.benchmark) on
   held-out samples of the slice and of the rest of the world, before and after;
4. WiSE-FT: interpolate the pretrained and the fully fine-tuned weights at
   `alphas` and measure both again (clipkit.wiseft.wiseft_sweep).

Outputs in out_dir: data/, bench/ (slice_* and rest_* datasets), pretrain/,
ft-<variant>/ (train_clip run folders), wiseft/ (results.jsonl, tradeoff.png
for slice_shape vs rest_shape), finetune.png (the figure), results.json,
results.jsonl (one CLIP_benchmark-style row per model, dataset) and
report.html. Finished stages are skipped when run again (delete a folder to redo it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import clipkit
from clipkit.data.shards import write_shards
from clipkit.evaluation import evaluate, write_rows
from clipkit.evaluation.tasks import json_safe
from clipkit.io import write_json
from clipkit.io.figures import save_figure
from clipkit.io.report import Figure, Section, write_report
from clipkit.shapes import world as shapes
from clipkit.shapes.benchmark import export_shapes_benchmark, slice_samples
from clipkit.train.clip import ClipTrainConfig, train_clip
from clipkit.wiseft import plot_tradeoff, wiseft_sweep

VARIANTS = {"full": {}, "lock-image": {"lock_image": True}, "lock-text": {"lock_text": True}}


@dataclass
class FinetuneExperiment:
    out_dir: str = "runs/finetune"
    base_model: str | None = None  # a saved clipkit model to fine-tune; None: pretrain `model` here
    model: str = "shapes-small"
    pretrain_samples: int = 10_000
    pretrain_epochs: int = 4
    pretrain_lr: float = 1e-3
    slice_colors: tuple = ("red", "blue")
    finetune_samples: int = 2_000
    finetune_steps: int = 150
    finetune_lr: float = 1e-3
    batch_size: int = 128
    eval_samples: int = 400
    alphas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    num_threads: int | None = None
    seed: int = 0
    progress: bool = True


QUICK = FinetuneExperiment(
    out_dir="runs/finetune-quick",
    model="shapes-tiny",
    pretrain_samples=256,
    pretrain_epochs=1,
    finetune_samples=128,
    finetune_steps=3,
    batch_size=32,
    eval_samples=48,
    alphas=(0.0, 0.5, 1.0),
    progress=False,
)


def _in_slice(colors):
    return lambda attrs: attrs.color in colors


def _write_data(cfg: FinetuneExperiment, root: Path) -> dict:

    for color in cfg.slice_colors:
        if color not in shapes.COLOR_NAMES:
            raise ValueError(f"slice colour {color!r} is not one of {shapes.COLOR_NAMES}")
    inside = _in_slice(tuple(cfg.slice_colors))
    data = root / "data"
    if not (data / "done.json").is_file():
        if cfg.base_model is None:
            write_shards(
                shapes.generate("train", cfg.pretrain_samples, cfg.seed),
                data / "world",
                shard_size=5_000,
                total=cfg.pretrain_samples,
            )
        write_shards(
            slice_samples("train", cfg.finetune_samples, cfg.seed + 7, inside), data / "slice", shard_size=5_000
        )
        bench = {}
        bench.update(
            export_shapes_benchmark(
                root / "bench", "val", cfg.eval_samples, cfg.seed + 1, where=inside, prefix="slice_", retrieval=False
            )
        )
        bench.update(
            export_shapes_benchmark(
                root / "bench",
                "val",
                cfg.eval_samples,
                cfg.seed + 1,
                where=lambda a: not inside(a),
                prefix="rest_",
                retrieval=False,
            )
        )
        _write_json(data / "done.json", {"bench": bench})
    return json.loads((data / "done.json").read_text())["bench"]


def _write_json(path: Path, obj) -> None:

    write_json(path, json_safe(obj))


def _train(cfg: FinetuneExperiment, out: Path, **fields) -> str:
    """Run train_clip unless out/summary.json says it finished; the model folder."""

    if not (out / "summary.json").is_file():
        train_clip(
            ClipTrainConfig(
                out_dir=str(out),
                batch_size=cfg.batch_size,
                num_workers=0,
                num_threads=cfg.num_threads,
                seed=cfg.seed,
                progress=cfg.progress,
                log_every=10,
                **fields,
            )
        )
    return str(out / "model")


def _scores(rows: list[dict]) -> dict:
    """Mean zero-shot acc1 over the attributes on the slice and on the rest, plus every dataset's acc1."""
    per = {r["dataset"]: r["metrics"]["acc1"] for r in rows}
    mean = lambda prefix: (
        sum(v for k, v in per.items() if k.startswith(prefix)) / max(1, sum(k.startswith(prefix) for k in per))
    )
    return {"slice": mean("slice_"), "rest": mean("rest_"), "per_dataset": per}


def run_finetune_experiment(cfg: FinetuneExperiment | None = None) -> dict:
    """Run (or resume) the experiment (default: FinetuneExperiment()); returns what results.json holds."""
    if cfg is None:
        cfg = FinetuneExperiment()

    root = Path(cfg.out_dir)
    bench = _write_data(cfg, root)
    datasets = list(bench.values())
    base = cfg.base_model or _train(
        cfg,
        root / "pretrain",
        model=cfg.model,
        train_data=str(root / "data/world"),
        epochs=cfg.pretrain_epochs,
        lr=cfg.pretrain_lr,
        warmup_steps=50,
    )
    models = {"pretrained": base}
    for variant, locks in VARIANTS.items():
        models[variant] = _train(
            cfg,
            root / f"ft-{variant}",
            model=base,
            train_data=str(root / "data/slice"),
            max_steps=cfg.finetune_steps,
            lr=cfg.finetune_lr,
            warmup_steps=max(1, cfg.finetune_steps // 10),
            **locks,
        )
    results: dict = {"config": asdict(cfg), "models": {}, "wiseft": []}
    all_rows: list[dict] = []
    for name, path in models.items():
        model = clipkit.load(path, device="cpu")
        rows = [{**evaluate(model, d, "zeroshot", model_name=name), "model_path": path} for d in datasets]
        all_rows.extend(rows)
        results["models"][name] = _scores(rows)
    sweep = wiseft_sweep(base, models["full"], datasets, cfg.alphas, task="zeroshot")
    for alpha in sorted({r["alpha"] for r in sweep}):
        results["wiseft"].append({"alpha": alpha, **_scores([r for r in sweep if r["alpha"] == alpha])})
    (root / "wiseft").mkdir(parents=True, exist_ok=True)
    write_rows(sweep, root / "wiseft" / "results.jsonl", append=False)
    plot_tradeoff(
        sweep,
        root / "wiseft" / "tradeoff.png",
        "slice_shape",
        "rest_shape",
        title="WiSE-FT: shape zero-shot, slice vs rest",
    )
    write_rows(all_rows, root / "results.jsonl", append=False)
    _write_json(root / "results.json", results)
    plot_experiment(results, root / "finetune.png")
    _write_report(results, root)
    return results


def plot_experiment(results: dict, path) -> Path:
    """Left: slice / rest zero-shot per model; right: the WiSE-FT curve with the locked variants beside it."""
    from matplotlib.figure import Figure

    names = list(results["models"])
    fig = Figure(figsize=(11, 4.3))
    left, right = fig.subplots(1, 2)
    width = 0.38
    for offset, part, color in ((-width / 2, "slice", "tab:orange"), (width / 2, "rest", "tab:blue")):
        values = [results["models"][n][part] for n in names]
        bars = left.bar([i + offset for i in range(len(names))], values, width, label=part, color=color)
        left.bar_label(bars, fmt="%.2f", fontsize=7)
    left.set_xticks(range(len(names)), labels=names)
    left.set_ylim(0, 1.08)
    left.set_ylabel("zero-shot acc1 (mean of 5 attributes)")
    left.set_title("fine-tuned on the slice only")
    left.legend(fontsize=8, loc="lower right")
    curve = results["wiseft"]
    right.plot([p["slice"] for p in curve], [p["rest"] for p in curve], "-o", color="tab:purple", label="WiSE-FT")
    for p in curve:
        right.annotate(
            f"α={p['alpha']:g}", (p["slice"], p["rest"]), textcoords="offset points", xytext=(5, -11), fontsize=8
        )
    for name, marker in (("lock-image", "s"), ("lock-text", "^")):
        if name in results["models"]:
            m = results["models"][name]
            right.plot([m["slice"]], [m["rest"]], marker, markersize=8, label=name)
    right.set_xlabel("slice zero-shot acc1")
    right.set_ylabel("rest-of-world zero-shot acc1")
    right.set_title("α = 0 pretrained, α = 1 fine-tuned (full)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _write_report(results: dict, root: Path) -> None:

    cfg = results["config"]
    table = [
        {"model": n, "slice": round(m["slice"], 4), "rest": round(m["rest"], 4)} for n, m in results["models"].items()
    ]
    table += [
        {"model": f"wise-ft α={p['alpha']:g}", "slice": round(p["slice"], 4), "rest": round(p["rest"], 4)}
        for p in results["wiseft"]
    ]
    text = (
        f"A {cfg['model']} CLIP pretrained on the whole shapes world is fine-tuned for {cfg['finetune_steps']} "
        f"steps on shapes of colours {list(cfg['slice_colors'])} only. Zero-shot accuracy (mean over shape, "
        f"colour, size, position and hat; {cfg['eval_samples']} held-out images each) is measured on the slice "
        f"and on the rest of the world, for the fine-tuned model with every weight trained, with the image or "
        f"the text tower locked, and along the WiSE-FT interpolation between pretrained and fine-tuned weights."
    )
    write_report(
        root / "report.html",
        "clipkit: fine-tuning that keeps zero-shot",
        [
            Section(
                "The trap and the remedies",
                text,
                figures=[
                    Figure("finetune.png", "Slice vs rest, per model and along WiSE-FT."),
                    Figure("wiseft/tradeoff.png", "Shape zero-shot along α."),
                ],
                table=table,
            )
        ],
    )


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="The fine-tuning experiment on the shapes world (see module doc).")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds; for tests)")
    p.add_argument("--base-model", default=None, help="a saved clipkit model to fine-tune instead of pretraining")
    numbers = ("pretrain_samples", "pretrain_epochs", "finetune_steps", "batch_size", "eval_samples", "num_threads")
    for name in numbers:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FinetuneExperiment()
    changes = {k: getattr(args, k) for k in ("base_model", *numbers) if getattr(args, k) is not None}
    if args.out is not None:
        changes["out_dir"] = args.out
    result = run_finetune_experiment(replace(cfg, **changes))
    for name, m in result["models"].items():
        print(f"{name:>12}: slice {m['slice']:.3f}  rest {m['rest']:.3f}")
    for p_ in result["wiseft"]:
        print(f"  wise-ft α={p_['alpha']:.2f}: slice {p_['slice']:.3f}  rest {p_['rest']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
