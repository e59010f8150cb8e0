"""The spiral lab: train two tiny denoisers, run every sampler and guidance setting, measure, draw.

    metrics = run_spiral_lab("runs/spiral")        # figures + metrics.json + index.html in that folder

What it reproduces (the CLIP / diffusion explainer's 2-D experiments):
  * the learned field points to the centre of the data at high noise and to the spiral at low noise;
  * DDPM = model steps + noise steps; without the noise steps samples collapse (coverage falls);
  * DDIM with 50 steps and flow matching with 16 match DDPM with 1000;
  * classifier-free guidance puts more class-conditional samples on the arm that was asked for.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from clipkit.diffusion import DDIMSampler, DDPMSampler, FlowMatchSampler, NoiseSchedule, sample
from clipkit.diffusion.base import ModelFn
from clipkit.io import claim_output, write_json
from clipkit.io.report import Figure, Section, write_report
from clipkit.labs.spiral import figures
from clipkit.labs.spiral.model import SpiralDenoiser, ToyTrainConfig, train_spiral_model
from clipkit.labs.spiral.spiral import CLASSES, NULL_CLASS, SpiralScorer, sample_spiral

LAB_FORMAT = "clipkit-spiral-lab"  # the marker of a folder the lab writes into


@dataclass(frozen=True)
class SpiralLabConfig:
    train_steps: int = 1000  # epsilon model (DDPM / DDIM), class-conditional with dropout
    flow_train_steps: int = 600  # velocity model (flow matching)
    batch_size: int = 512
    num_points: int = 256  # samples per cloud
    ddpm_steps: int = 1000
    ddim_steps: int = 50
    flow_steps: int = 16
    guidance_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    # Guided runs use ancestral DDPM on 200 of the 1000 timesteps: DDIM-50 overshoots at scale 4
    # with this small model (arm fraction falls), ancestral noise corrects it.
    guidance_steps: int = 200
    field_t: tuple[float, ...] = (0.95, 0.7, 0.5, 0.4, 0.3, 0.1)
    cfg_field_t: float = 0.15
    trajectory_steps: int = 100  # DDPM on every 10th timestep, so single model steps are visible
    cfg_field_class: str = "dog"
    seed: int = 0


QUICK = SpiralLabConfig(train_steps=700, flow_train_steps=400)


def _null(n: int) -> torch.Tensor:
    return torch.full((n,), NULL_CLASS, dtype=torch.long)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 3)


def train_lab_models(cfg: SpiralLabConfig, out_dir=None) -> tuple[SpiralDenoiser, SpiralDenoiser, dict]:
    """(epsilon model, flow model, training stats) for one lab config; their run folders are
    out_dir/ddpm and out_dir/flow (None: a temporary folder, removed afterwards)."""
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="spiral-models-") as tmp:
            return train_lab_models(cfg, tmp)
    eps_model, eps_stats = train_spiral_model(
        ToyTrainConfig(
            process="ddpm",
            max_steps=cfg.train_steps,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            out_dir=str(Path(out_dir) / "ddpm"),
        )
    )
    flow_model, flow_stats = train_spiral_model(
        ToyTrainConfig(
            process="flow",
            max_steps=cfg.flow_train_steps,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            out_dir=str(Path(out_dir) / "flow"),
        )
    )
    return eps_model, flow_model, {"ddpm": eps_stats, "flow": flow_stats}


def compare_samplers(
    eps_model: ModelFn, flow_model: ModelFn, cfg: SpiralLabConfig, scorer: SpiralScorer | None = None
) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Unconditional clouds from DDPM, DDPM without its noise step, DDIM and flow matching.

    Returns ({name: metrics}, {name: samples (N, 2)}); every run starts from the same noise.
    """
    scorer = scorer or SpiralScorer()
    schedule = NoiseSchedule("linear")
    n = cfg.num_points
    runs = {
        f"ddpm_{cfg.ddpm_steps}": (eps_model, DDPMSampler(schedule), cfg.ddpm_steps),
        f"ddpm_{cfg.ddpm_steps}_no_noise": (eps_model, DDPMSampler(schedule, variance_type="zero"), cfg.ddpm_steps),
        f"ddim_{cfg.ddim_steps}": (eps_model, DDIMSampler(schedule, eta=0.0), cfg.ddim_steps),
        f"flow_{cfg.flow_steps}": (flow_model, FlowMatchSampler(), cfg.flow_steps),
    }
    metrics, clouds = {}, {}
    for name, (model, sampler, steps) in runs.items():
        g = torch.Generator().manual_seed(cfg.seed + 1)
        x, secs = _timed(sample, model, (n, 2), sampler, steps, cond=_null(n), generator=g)
        metrics[name] = {**scorer.score(x), "steps": steps, "seconds": secs}
        clouds[name] = x
    return metrics, clouds


def guidance_experiment(
    eps_model: ModelFn,
    cfg: SpiralLabConfig,
    scorer: SpiralScorer | None = None,
    scales: tuple[float, ...] | None = None,
) -> tuple[dict[str, dict], list[tuple]]:
    """Class-conditional sampling (a third of the points per class) at each guidance scale.

    Scale 0 is the unconditional model (the baseline: the class is ignored), 1 the conditional
    model alone, > 1 classifier-free guidance against the learned null class.
    Returns ({"scale_s": metrics}, [(s, samples, requested, metrics)]).
    """
    scorer = scorer or SpiralScorer()
    n = cfg.num_points - cfg.num_points % len(CLASSES)
    requested = torch.arange(n) % len(CLASSES)
    sampler = DDPMSampler(NoiseSchedule("linear"))
    metrics, runs = {}, []
    for s in scales if scales is not None else (0.0, *cfg.guidance_scales):
        g = torch.Generator().manual_seed(cfg.seed + 2)
        x, secs = _timed(
            sample,
            eps_model,
            (n, 2),
            sampler,
            cfg.guidance_steps,
            cond=requested,
            uncond=_null(1),
            guidance_scale=s,
            generator=g,
        )
        m = {**scorer.score(x, requested), "seconds": secs}
        metrics[f"scale_{s:g}"] = m
        runs.append((s, x, requested, m))
    return metrics, runs


@torch.no_grad()
def field(model, t_frac: float, grid: torch.Tensor, cond: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The learned score direction -eps_hat at the grid points, at t = t_frac * (N - 1).

    -eps / sqrt(1 - abar) is the score of the noisy data, the direction a sampler moves x.
    """
    t = round(t_frac * (schedule.num_train_timesteps - 1))
    return -model(grid, torch.full((len(grid),), t), cond)


def grid_points(n: int = 17, limit: float = 1.8) -> torch.Tensor:
    axis = torch.linspace(-limit, limit, n)
    return torch.cartesian_prod(axis, axis)  # (n*n, 2)


def towards_spiral(v: torch.Tensor, grid: torch.Tensor, scorer: SpiralScorer, centre: torch.Tensor) -> float:
    """Fraction of grid points whose vector is better aligned with the nearest spiral point than with `centre`."""
    _, idx = scorer.nearest(grid)
    cos = torch.nn.functional.cosine_similarity
    return float((cos(v, scorer.curve[idx] - grid, dim=-1) > cos(v, centre - grid, dim=-1)).float().mean())


def vector_field_study(eps_model, cfg: SpiralLabConfig, scorer: SpiralScorer):
    """The unconditional field at cfg.field_t for the figure, and the t where it turns to the spiral.

    At high noise the noisy data is ~N(sqrt(abar) * mean, I), whose score points at sqrt(abar) * mean:
    that is the "centre" each vector is compared with.
    """
    schedule = NoiseSchedule("linear")
    grid = grid_points()
    mean = sample_spiral(4096, torch.Generator().manual_seed(0))[0].mean(0)
    null = _null(len(grid))

    def measure(t: float) -> tuple[torch.Tensor, float]:
        v = field(eps_model, t, grid, null, schedule)
        a = float(schedule.sqrt_alphas_cumprod[round(t * (schedule.num_train_timesteps - 1))])
        return v, towards_spiral(v, grid, scorer, a * mean)

    sweep = [round(0.05 * i, 2) for i in range(1, 20)]
    frac = {t: measure(t)[1] for t in sweep}
    # The switch: the highest t at which most of the field already points at the spiral.
    switch = max((t for t in sweep if frac[t] >= 0.5), default=None)
    panels = [(t, *measure(t)) for t in cfg.field_t]
    return {"t": sweep, "towards_spiral": [round(frac[t], 3) for t in sweep], "switch_t": switch}, grid, panels


def run_spiral_lab(
    out_dir: str | os.PathLike,
    quick: bool = False,
    seed: int = 0,
    config: SpiralLabConfig | None = None,
    models: tuple[SpiralDenoiser, SpiralDenoiser] | None = None,
    overwrite: bool = False,
) -> dict:
    """Train, sample, measure and draw; writes PNGs, metrics.json and index.html to out_dir. Returns the metrics.

    models: an already trained (epsilon model, flow model) pair to skip training (tests reuse one).
    out_dir must be new, empty or a previous lab's (clipkit.io.claim_output); anything else needs `overwrite`.
    """
    cfg = config or (QUICK if quick else SpiralLabConfig())
    cfg = replace(cfg, seed=seed)
    out = claim_output(out_dir, LAB_FORMAT, overwrite=overwrite)
    t_start = time.perf_counter()
    scorer = SpiralScorer()

    if models is None:
        eps_model, flow_model, train_stats = train_lab_models(cfg, out / "models")
    else:
        (eps_model, flow_model), train_stats = models, {}
    data = sample_spiral(cfg.num_points, torch.Generator().manual_seed(seed + 3))[0]
    sampler_metrics, clouds = compare_samplers(eps_model, flow_model, cfg, scorer)
    guidance_metrics, guidance_runs = guidance_experiment(eps_model, cfg, scorer)
    field_metrics, grid, panels = vector_field_study(eps_model, cfg, scorer)

    # One DDPM trajectory, split into its model steps (x_t -> posterior mean) and noise steps.
    ddpm = DDPMSampler(NoiseSchedule("linear"))
    _, traj = sample(
        eps_model,
        (1, 2),
        ddpm,
        cfg.trajectory_steps,
        cond=_null(1),
        return_trajectory=True,
        generator=torch.Generator().manual_seed(seed + 4),
    )
    means = torch.stack(
        [ddpm.mean_std(traj.model_output[i], int(t), traj.x[i])[0] for i, t in enumerate(traj.timesteps)]
    )[:, 0]

    cls = torch.full((len(grid),), CLASSES.index(cfg.cfg_field_class))
    schedule = NoiseSchedule("linear")
    v_cond = field(eps_model, cfg.cfg_field_t, grid, cls, schedule)
    v_uncond = field(eps_model, cfg.cfg_field_t, grid, _null(len(grid)), schedule)

    names = list(sampler_metrics)
    titles = {
        names[0]: f"DDPM, {cfg.ddpm_steps} steps",
        names[1]: "DDPM without noise step",
        names[2]: f"DDIM, {cfg.ddim_steps} steps",
        names[3]: f"flow matching, {cfg.flow_steps} Euler steps",
    }
    pngs = {
        "vector_field.png": lambda p: figures.vector_field_figure(p, grid, panels),
        "ddpm_trajectory.png": lambda p: figures.trajectory_figure(p, means, traj.x[:, 0], clouds[names[0]]),
        "samplers.png": lambda p: figures.clouds_figure(p, [(titles[k], clouds[k], sampler_metrics[k]) for k in names]),
        "guidance.png": lambda p: figures.guidance_figure(p, [r for r in guidance_runs if r[0] >= 1]),
        "cfg_field.png": lambda p: figures.cfg_field_figure(
            p, grid, v_cond, v_uncond, cfg.cfg_field_t, cfg.cfg_field_class
        ),
    }
    for name, draw in pngs.items():
        draw(out / name)

    metrics = {
        "config": asdict(cfg),
        "training": {k: {"seconds": v["seconds"], "final_loss": v["final_loss"]} for k, v in train_stats.items()},
        "data": scorer.score(data),
        "samplers": sampler_metrics,
        "guidance": guidance_metrics,
        "vector_field": field_metrics,
        "figures": list(pngs),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    write_json(out / "metrics.json", metrics)
    write_index(out / "index.html", metrics)
    return metrics


_CAPTIONS = {
    "vector_field.png": "The learned field (-epsilon, the direction samples move) at several noise levels t: at high "
    "t the arrows point to the centre of the data, from t = {switch} down most of them point "
    "to the nearest piece of the spiral.",
    "ddpm_trajectory.png": "One DDPM sample's path: blue model steps pull towards the predicted mean, orange noise "
    "steps add fresh noise back; the grey cloud is where 256 such paths end.",
    "samplers.png": "256 samples from the same starting noise: DDPM, DDPM with the noise steps removed (it "
    "collapses, coverage {nonoise:.0%}), DDIM with 50 steps and flow matching with 16.",
    "guidance.png": "Asking for a class (colour) without guidance and with guidance 2 and 4: the share of samples on "
    "the requested arm goes {g1:.0%} -> {g2:.0%} -> {g4:.0%}.",
    "cfg_field.png": "At one noise level the conditional field for the requested class (yellow) bends towards its "
    "arm where the unconditional field (grey) points at the whole spiral; guidance extrapolates "
    "from grey through yellow.",
}


def spiral_section(metrics: dict, prefix: str = "", title: str = "The spiral lab: diffusion you can see"):
    """The lab as one report Section (its own page, and the demo report's chapter): each figure with one
    sentence filled with this run's numbers, then the metrics table. `prefix`: the figures' folder."""
    s, g = metrics["samplers"], metrics["guidance"]
    nonoise = next(v for k, v in s.items() if k.endswith("no_noise"))
    fill = {
        "switch": metrics["vector_field"]["switch_t"],
        "nonoise": nonoise["coverage"],
        "g1": g.get("scale_1", {}).get("arm_fraction", float("nan")),
        "g2": g.get("scale_2", {}).get("arm_fraction", float("nan")),
        "g4": g.get("scale_4", {}).get("arm_fraction", float("nan")),
    }
    rows = [
        {
            "run": name,
            "distance to spiral": m["distance"],
            "coverage": m["coverage"],
            "requested arm": m.get("arm_fraction", ""),
            "seconds": m.get("seconds", ""),
        }
        for name, m in [("data (true points)", metrics["data"])]
        + list(s.items())
        + [(f"guidance {k.split('_')[1]}", v) for k, v in g.items()]
    ]
    seconds = sum(v["seconds"] for v in metrics["training"].values())
    text = (
        f'A 2-D spiral (inner third "person", middle "dog", outer "cat"), a tiny MLP denoiser trained '
        f"in {seconds:.0f} s, and every sampler of clipkit.diffusion. Distance: mean distance of samples to the "
        f"spiral; coverage: share of the spiral with a sample within 0.1; requested arm: share of samples "
        f"within 0.05 of the arm that was asked for."
    )
    figures = [Figure(prefix + name, _CAPTIONS[name].format(**fill)) for name in metrics["figures"]]
    return Section(title, text, figures, table=rows)


def write_index(path: Path, metrics: dict) -> None:
    """The lab's own page (clipkit.io.report, like the demo's)."""
    write_report(path, "clipkit spiral lab", [spiral_section(metrics)])
