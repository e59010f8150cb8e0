"""Sampler benchmarks: what the loop costs beyond the model, and what few-step samplers buy.

    python benchmarks/bench_samplers.py [--quick] [--threads 1] [--rounds 5] [--strict]

A. Loop overhead. `clipkit.diffusion.sample` against a bare Python loop that makes the very same
   model calls (same inputs, same batch, precomputed time tensors) and nothing else.
   Overhead = loop / bare - 1, paired round by round. Goal: <= 5%. DDIM (eta 0) shows the loop's
   own cost: the step is two fused tensor ops. DDPM adds what the algorithm must do on top: one
   Gaussian draw per step (about 10 ns per number on this CPU, as much as a tiny model's whole
   forward pass). Measured for the spiral MLP (tiny) and a wider MLP standing in for real work,
   without and with guidance (bare calls then get the doubled batch ready-made). A third contender,
   the same loop around a free "model" (returns a ready tensor), is the loop's cost alone: small, and
   so measurable even on a busy machine where loop - bare is within the noise.
B. Quality per second on the spiral: DDIM-50 and flow-16 against DDPM-1000, same trained models
   (the spiral lab's), 256 samples from the same noise: wall time, speed-up, distance, coverage.

Every comparison alternates its contenders (A B C, C B A, ...) for --rounds rounds through
benchmarks/protocol.py: medians with their range, per-round ratios; a window in which other
processes took CPU is marked and left out (--strict stops instead). Tables printed and written to
benchmarks/results/samplers.json / .md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from clipkit.diffusion import DDIMSampler, DDPMSampler, FlowMatchSampler, NoiseSchedule, sample
from clipkit.labs.spiral import QUICK, SpiralDenoiser, SpiralLabConfig, SpiralScorer
from clipkit.labs.spiral.lab import train_lab_models
from clipkit.labs.spiral.spiral import NULL_CLASS

import protocol


class WideMLP(nn.Module):
    """A heavier denoiser stand-in: 3 x 512 MLP on 64-d vectors (~0.6M params, ~0.3 GFLOP per call at batch 256)."""

    def __init__(self, dim: int = 64, width: int = 512, depth: int = 3):
        super().__init__()
        layers, d = [], dim + 1
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t.float().unsqueeze(-1) / 1000], dim=-1))


@torch.no_grad()
def bare_calls(model, x, cond, t_batches) -> dict:
    t0 = time.perf_counter()
    for t in t_batches:
        model(x, t, cond)
    return {"seconds": time.perf_counter() - t0}


@torch.no_grad()
def loop(model, sampler, shape, cond, uncond, scale, steps) -> dict:
    t0 = time.perf_counter()
    sample(
        model,
        shape,
        sampler,
        steps,
        cond=cond,
        uncond=uncond,
        guidance_scale=scale,
        generator=torch.Generator().manual_seed(0),
    )
    return {"seconds": time.perf_counter() - t0}


def _overhead(ratio: dict) -> str:
    """A loop / bare ratio as overhead in %: median (range)."""
    if not ratio["rounds"]:
        return "n/a"
    return f"{100 * (ratio['median'] - 1):+.1f}% ({100 * (ratio['min'] - 1):+.1f}% to {100 * (ratio['max'] - 1):+.1f}%)"


def _contenders(model, sampler, x, c, t_batches, ready, shape, cond, neg, scale, steps) -> dict:
    """Part A's three contenders for one case: bare model calls, the loop, the loop around a free model."""
    return {
        "bare": lambda: bare_calls(model, x, c, t_batches),
        "loop": lambda: loop(model, sampler, shape, cond, neg, scale, steps),
        "free": lambda: loop(lambda x, t, c: ready, sampler, shape, cond, neg, scale, steps),
    }


def overhead_part(args) -> tuple[list, str]:
    torch.manual_seed(0)
    cases = [
        ("spiral MLP", SpiralDenoiser().eval(), (256, 2), torch.full((256,), 1), torch.tensor([NULL_CLASS])),
        ("wide MLP 3x512", WideMLP().eval(), (256, 64), None, None),
    ]
    samplers = {"DDIM": DDIMSampler(NoiseSchedule("linear")), "DDPM": DDPMSampler(NoiseSchedule("linear"))}
    steps = args.steps
    cases = [
        (case, guided, kind)
        for case in cases
        for guided in ((False, True) if case[3] is not None else (False,))
        for kind in samplers
    ]
    rows, data = [], []
    for (name, model, shape, cond, uncond), guided, kind in cases:
        batch = shape[0] * (2 if guided else 1)
        x = torch.randn(batch, *shape[1:])
        c = None if cond is None else torch.cat([cond, uncond.expand(shape[0])]) if guided else cond
        samplers[kind].set_timesteps(steps)  # the very timesteps the loop will use
        t_batches = [torch.full((batch,), int(t)) for t in samplers[kind].timesteps]
        ready = torch.zeros(batch, *shape[1:])
        scale, neg = (3.0, uncond) if guided else (1.0, None)
        contenders = _contenders(model, samplers[kind], x, c, t_batches, ready, shape, cond, neg, scale, steps)
        for warm_up in contenders.values():  # allocator, first kernels: not in round 1's first window
            warm_up()
        runs = protocol.interleave(contenders, rounds=args.rounds, strict=args.strict, log=None)
        summary = runs.summary("seconds")
        overhead, free = runs.ratio("seconds", "loop", "bare"), runs.ratio("seconds", "free", "bare")
        rows.append(
            [
                name,
                kind,
                shape[0],
                "yes" if guided else "no",
                steps,
                protocol.median_range(summary.get("bare")),
                protocol.median_range(summary.get("loop")),
                _overhead(overhead),
                protocol.median_range(summary.get("free")),
                protocol.median_range({k: 100 * v if k != "rounds" else v for k, v in free.items()}, "%"),
                protocol.clean_rounds(overhead, args.rounds),
            ]
        )
        data.append(
            {
                "model": name,
                "sampler": kind,
                "batch": shape[0],
                "guidance": guided,
                "steps": steps,
                "summary": summary,
                "loop_over_bare": overhead,
                "free_over_bare": free,
                "contended_windows": runs.contended_windows(),
            }
        )
    caption = (
        f"**A. `sample()` loop vs the same model calls in a bare loop** — {args.threads} thread(s), CPU; "
        f"seconds for {steps} steps, median over {args.rounds} interleaved round(s) with its range; "
        f"overhead = loop / bare - 1, paired round by round (goal <= 5%); loop-only = the loop around a free "
        f"model, as % of bare; guidance: scale 3, cond + uncond in one doubled batch.\n\n"
    )
    headers = [
        "model",
        "sampler",
        "batch",
        "CFG",
        "steps",
        "bare s",
        "loop s",
        "overhead",
        "loop-only s",
        "loop-only / bare",
        "clean rounds",
    ]
    return data, caption + protocol.markdown_table(headers, rows)


def quality_part(args, cfg: SpiralLabConfig) -> tuple[dict, str]:
    """The spiral lab's samplers (as clipkit.labs.spiral.lab.compare_samplers runs them), interleaved."""
    eps_model, flow_model, stats = train_lab_models(cfg)
    scorer, schedule, n = SpiralScorer(), NoiseSchedule("linear"), cfg.num_points
    null = torch.full((n,), NULL_CLASS, dtype=torch.long)
    base = f"ddpm_{cfg.ddpm_steps}"
    contenders = {
        base: (eps_model, DDPMSampler(schedule), cfg.ddpm_steps),
        f"{base}_no_noise": (eps_model, DDPMSampler(schedule, variance_type="zero"), cfg.ddpm_steps),
        f"ddim_{cfg.ddim_steps}": (eps_model, DDIMSampler(schedule, eta=0.0), cfg.ddim_steps),
        f"flow_{cfg.flow_steps}": (flow_model, FlowMatchSampler(), cfg.flow_steps),
    }

    @torch.no_grad()
    def run(model, sampler, steps) -> dict:
        g = torch.Generator().manual_seed(cfg.seed + 1)  # every run from the same noise
        t0 = time.perf_counter()
        x = sample(model, (n, 2), sampler, steps, cond=null, generator=g)
        return {"seconds": time.perf_counter() - t0, **scorer.score(x)}

    run(eps_model, DDIMSampler(schedule, eta=0.0), 5)  # warm-up, untimed
    runs = protocol.interleave(
        {k: (lambda v=v: run(*v)) for k, v in contenders.items()}, rounds=args.rounds, strict=args.strict, log=None
    )
    summary = runs.summary("seconds")
    rows, data = [], {}
    for name, (_, _, steps) in contenders.items():
        last = next(m for k, _, m, _ in reversed(runs.runs) if k == name)  # same noise: same cloud each round
        speedup = runs.ratio("seconds", base, name)
        rows.append(
            [
                name,
                steps,
                protocol.median_range(summary.get(name)),
                protocol.median_range(speedup, "x"),
                f"{last['distance']:.4f}",
                f"{last['coverage']:.3f}",
                protocol.clean_rounds(speedup, args.rounds),
            ]
        )
        data[name] = {
            "steps": steps,
            "seconds": summary.get(name),
            "speedup_over_ddpm": speedup,
            "distance": last["distance"],
            "coverage": last["coverage"],
        }
    caption = (
        f"**B. Few-step samplers on the spiral lab's models** ({'quick' if cfg == QUICK else 'default'} "
        f"training: {stats['ddpm']['seconds']:.1f} s epsilon, {stats['flow']['seconds']:.1f} s flow), {n} "
        f"unconditional samples from the same noise, {args.threads} thread(s), CPU; seconds: median over "
        f"{args.rounds} interleaved round(s) with its range; speed-up over {base}, paired round by round. "
        f"Data itself: distance ~0.008, coverage ~0.99; {base}_no_noise is the ablation, not a sampler.\n\n"
    )
    headers = ["sampler", "steps", "seconds", "speed-up", "distance", "coverage", "clean rounds"]
    return {"samplers": data, "contended_windows": runs.contended_windows()}, caption + protocol.markdown_table(
        headers, rows
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Sampler loop overhead and few-step samplers on the spiral.")
    p.add_argument("--quick", action="store_true", help="the spiral lab's quick training for part B")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--steps", type=int, default=500, help="sampling steps in part A [500]")
    protocol.add_arguments(p, rounds=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs\n")
    overhead, table_a = overhead_part(args)
    print(table_a)
    quality, table_b = quality_part(args, QUICK if args.quick else SpiralLabConfig())
    print(table_b)
    path = protocol.write_results(
        "samplers", {"args": vars(args), "loop_overhead": overhead, "spiral": quality}, table_a + "\n" + table_b
    )
    print(f"written: {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
