"""Weight-space ensembling of two CLIPs of one architecture (WiSE-FT, Wortsman et al. 2022).

    from clipkit.wiseft import interpolate, wiseft_sweep, plot_tradeoff
    mixed = interpolate("runs/pretrained/model", "runs/finetuned/model", alpha=0.5)   # a ClipModel
    mixed.save("runs/wise-0.5")
    rows = wiseft_sweep("runs/pretrained/model", "runs/finetuned/model",
                        ["bench/target_task", "bench/elsewhere"])       # alpha = 0, 0.25, ..., 1
    plot_tradeoff(rows, "tradeoff.png")

theta(alpha) = (1 - alpha) * theta_A + alpha * theta_B, tensor by tensor: alpha 0 is
A exactly, alpha 1 is B exactly (bit for bit: the endpoints are copied, not
computed). Fine-tuning a zero-shot model (A) on a narrow task (B) gains on the
task and loses elsewhere; WiSE-FT's finding is that the mixtures in between
often keep most of both. Entries equal in A and B are kept as they are (so
-inf attention masks survive); integer buffers come from the nearer endpoint.
The two models must share the architecture (model config, parameter names and
shapes): anything else is refused with the first difference named.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipkit.evaluation import evaluate, open_dataset, write_rows
from clipkit.io import claim_output
from clipkit.io.figures import save_figure
from clipkit.model import ClipConfig, ClipModel, resolve_model

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWEEP_FORMAT = "clipkit-wiseft-sweep"  # the marker of a folder wiseft_sweep wrote


def _as_model(model):

    if isinstance(model, ClipModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_dir():
            raise FileNotFoundError(
                f"{str(model)!r} is not a saved clipkit model directory; WiSE-FT interpolates "
                f"two saved models (or pass ClipModel objects)"
            )
        return resolve_model(model, device="cpu")
    raise TypeError(f"expected a ClipModel or a saved model directory; got {type(model).__name__}")


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return (
                    f"{path}{key}: {'absent' if key not in a else a[key]!r} vs {'absent' if key not in b else b[key]!r}"
                )
            diff = _first_difference(a[key], b[key], f"{path}{key}.")
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}{i}."))), None)
    return None if a == b else f"{path.rstrip('.')}: {a!r} vs {b!r}"


def check_compatible(a, b) -> None:
    """Raise ValueError naming the first architectural difference between ClipModels `a` and `b`."""
    hint = "WiSE-FT interpolates two models of the same architecture, e.g. a model and its own fine-tuned copy"
    diff = _first_difference(a.config.model_cfg, b.config.model_cfg)
    if diff:
        raise ValueError(
            f"cannot interpolate {a.config.name!r} and {b.config.name!r}: their architectures differ ({diff}); {hint}"
        )
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if set(sa) != set(sb):
        only = sorted(set(sa) ^ set(sb))
        raise ValueError(f"cannot interpolate: parameters {only[:5]} exist in only one of the models; {hint}")
    for key in sa:
        if sa[key].shape != sb[key].shape:
            raise ValueError(
                f"cannot interpolate: {key} has shape {tuple(sa[key].shape)} vs {tuple(sb[key].shape)}; {hint}"
            )


def interpolate(a, b, alpha: float = 0.5):
    """A new ClipModel with weights (1 - alpha) * A + alpha * B (module docstring); A and B are unchanged."""
    import copy

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha!r}; expected a number in [0, 1] (0 = the first model, 1 = the second)")
    alpha = float(alpha)
    a, b = _as_model(a), _as_model(b)
    check_compatible(a, b)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    mixed = {}
    for key, ta in sa.items():
        tb = sb[key].to(ta.device)
        if alpha == 0.0 or (not ta.is_floating_point() and alpha < 0.5):
            mixed[key] = ta.clone()
        elif alpha == 1.0 or not ta.is_floating_point():
            mixed[key] = tb.clone()
        else:
            mixed[key] = torch.where(ta == tb, ta, torch.lerp(ta, tb.to(ta.dtype), alpha))
    # The towers are what we mix; preprocessing follows A (the model B was fine-tuned from).
    module = copy.deepcopy(a.model)
    module.load_state_dict(mixed, strict=True)
    source = f"wise-ft(alpha={alpha:g}; A={a.identity}; B={b.identity})"
    config = ClipConfig(a.config.name, copy.deepcopy(a.config.model_cfg), dict(a.config.preprocess_cfg), source)
    return ClipModel(module, config, device=a.device)


def wiseft_sweep(
    a,
    b,
    datasets: list,
    alphas=DEFAULT_ALPHAS,
    task: str = "auto",
    batch_size: int = 256,
    max_samples: int | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> list[dict]:
    """Evaluate interpolate(a, b, alpha) on every dataset for every alpha; rows as clipkit.evaluation writes them,
    each with an "alpha" field. With `out_dir` (claimed first: new, ours, or `overwrite`): results.jsonl and
    tradeoff.png (first two datasets) in it."""
    from tqdm.auto import tqdm

    if len(datasets) < 1:
        raise ValueError("wiseft_sweep needs at least one dataset (two for the trade-off plot)")
    if out_dir is not None:
        inputs = [m for m in (a, b) if isinstance(m, (str, os.PathLike))] + list(datasets)
        out_dir = claim_output(out_dir, SWEEP_FORMAT, inputs, overwrite)
    alphas = sorted({float(x) for x in alphas})
    a, b = _as_model(a), _as_model(b)
    check_compatible(a, b)
    rows = []
    for alpha in tqdm(alphas, disable=not progress, desc="wise-ft sweep"):
        model = interpolate(a, b, alpha)
        for path in datasets:
            dataset = open_dataset(path)
            row = evaluate(
                model, dataset, task, batch_size=batch_size, max_samples=max_samples, model_name=f"wise-ft@{alpha:g}"
            )
            rows.append({**row, "alpha": alpha})
    if out_dir is not None:
        write_rows(rows, out_dir / "results.jsonl", append=False, overwrite=overwrite)
        if len({r["dataset"] for r in rows}) >= 2:
            plot_tradeoff(rows, out_dir / "tradeoff.png")
    return rows


def headline_metric(row: dict) -> str:
    """The metric a trade-off plot uses for a row: acc1 (lp_acc1 for probes) or image retrieval recall@5."""
    for key in ("acc1", "lp_acc1", "image_retrieval_recall@5", "image_retrieval_recall@1"):
        if key in row["metrics"]:
            return key
    return next(iter(row["metrics"]))


def plot_tradeoff(
    rows: list[dict],
    path: str | os.PathLike,
    x_dataset: str | None = None,
    y_dataset: str | None = None,
    metric: str | None = None,
    title: str = "WiSE-FT",
) -> Path:
    """Two panels: dataset Y's metric against dataset X's along alpha (the trade-off curve), and both vs alpha."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    if len(names) < 2 and (x_dataset is None or y_dataset is None):
        raise ValueError(f"a trade-off plot needs two datasets; the rows hold {names}")
    x_name, y_name = x_dataset or names[0], y_dataset or names[1]
    for n in (x_name, y_name):
        if n not in names:
            raise ValueError(f"dataset {n!r} is not among the rows' datasets {names}")

    def series(name):
        picked = sorted((r for r in rows if r["dataset"] == name), key=lambda r: r["alpha"])
        key = metric or headline_metric(picked[0])
        return [r["alpha"] for r in picked], [r["metrics"].get(key) for r in picked], key

    ax_alpha, xs, x_key = series(x_name)
    ay_alpha, ys, y_key = series(y_name)
    if ax_alpha != ay_alpha:
        raise ValueError(f"datasets {x_name!r} and {y_name!r} were evaluated at different alphas")
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    left.plot(xs, ys, "-o", color="tab:purple")
    for alpha, x, y in zip(ax_alpha, xs, ys):
        left.annotate(f"α={alpha:g}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
    left.set_xlabel(f"{x_name} {x_key}")
    left.set_ylabel(f"{y_name} {y_key}")
    left.set_title("trade-off (α: 0 = first model, 1 = second)")
    left.grid(alpha=0.3)
    right.plot(ax_alpha, xs, "-o", label=f"{x_name} {x_key}")
    right.plot(ay_alpha, ys, "-s", label=f"{y_name} {y_key}")
    right.set_xlabel("α")
    right.set_ylabel("metric")
    right.set_title("along the interpolation")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
