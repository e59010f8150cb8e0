"""The one denoising loop, with classifier-free guidance.

    out = uncond_out + s * (cond_out - uncond_out)          (Ho & Salimans 2022)

Both branches go through the model in ONE call on a doubled batch. `uncond`
is whatever the model was trained to see when the condition is dropped (a
learned or zero "null" condition) or a *negative* condition: guidance then
pushes away from it (WAN's / Stable Diffusion's negative prompt). Guidance is
applied to the raw model output, which is linear in x0 / eps / v, so it is
the same for every parameterisation. s = 1 is the conditional model alone and
skips the second branch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from clipkit.diffusion.base import ClipSpec, ModelFn, Sampler, randn_like_gen


@dataclass
class Trajectory:
    """What `sample(..., return_trajectory=True)` records, on CPU.

    x: (S+1, *shape) the states, x[0] the initial noise, x[-1] the result;
    timesteps: (S,) the model time at each step; model_output: (S, *shape) the (guided) outputs;
    x0: (S, *shape) the clean-sample estimates before any clipping.
    """

    x: torch.Tensor
    timesteps: torch.Tensor
    model_output: torch.Tensor
    x0: torch.Tensor


def cond_tensors(c):
    """The tensors of a condition (a tensor, or dicts / lists / tuples of conditions), in order."""
    if isinstance(c, torch.Tensor):
        yield c
    elif isinstance(c, (dict, list, tuple)):
        for v in c.values() if isinstance(c, dict) else c:
            yield from cond_tensors(v)


def _expand(c, batch: int):
    """Repeat a condition with batch 1 to `batch` rows (a single null / negative for the whole batch)."""
    if isinstance(c, torch.Tensor):
        if c.ndim and c.shape[0] == 1 and batch != 1:
            return c.expand(batch, *c.shape[1:])
        return c
    if isinstance(c, dict):
        return {k: _expand(v, batch) for k, v in c.items()}
    if isinstance(c, (list, tuple)):
        return type(c)(_expand(v, batch) for v in c)
    return c


def _concat(a, b):
    """Stack cond and uncond along the batch (tensors, or dicts / tuples of tensors alike)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"cond and uncond must have the same per-sample shape; got "
                f"{tuple(a.shape)} and {tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}"
            )
        return torch.cat([a, b.to(a.dtype)])
    if isinstance(a, dict):
        if set(a) != set(b):
            raise ValueError(f"cond and uncond have different keys: {sorted(a)} vs {sorted(b)}")
        return {k: _concat(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(_concat(x, y) for x, y in zip(a, b, strict=True))
    raise TypeError(f"conditions must be tensors or dicts / tuples of tensors to be batched, got {type(a).__name__}")


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    sampler: Sampler,
    steps: int,
    cond=None,
    uncond=None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    *,
    noise: torch.Tensor | None = None,
    clip_x0: ClipSpec | str = "sampler",
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    precision: str = "fp32",
):
    """Draw samples of `shape` (batch first) by running `sampler` for `steps` steps.

    model_fn(x, t, cond) -> output shaped like x, where x is (B', *shape[1:]), t is a (B',) tensor
    of model time (`sampler.timesteps` values: long timesteps for DDPM/DDIM, float sigma for flow)
    and cond is `cond` (B' = B) or cond and uncond concatenated along the batch (B' = 2B).
    cond / uncond: a tensor (batch B or 1), a dict or tuple of such, or None for an unconditional
    model. guidance_scale: s in uncond + s (cond - uncond); needs `uncond` unless s == 1.
    noise: the initial x_T (default: N(0, I) from `generator`).
    clip_x0: override the sampler's x0 clipping for this call (None, c, (lo, hi) or a callable);
    pixels in [-1, 1] want 1.0, embeddings want None (or a renormalising callable).
    precision: "bf16" runs the model under bf16 autocast (CPU matrix units, GPU tensor cores); the
    sampler's arithmetic and x stay float32.
    Returns x, or (x, Trajectory) when return_trajectory.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r}; expected 'fp32' or 'bf16'")
    if len(shape) < 1 or any((not isinstance(d, int)) or d < 1 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints (batch first), got {shape!r}")
    guidance_scale = float(guidance_scale)
    guided = guidance_scale != 1.0
    if guided and uncond is None:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs an `uncond` (null or negative) condition; "
            "pass uncond or use guidance_scale=1.0"
        )
    batch = shape[0]
    for name, c in (("cond", cond), ("uncond", uncond)):
        b = next((v.shape[0] for v in cond_tensors(c) if v.ndim), None)
        if b is not None and b not in (1, batch):
            raise ValueError(f"{name} has batch size {b}; expected 1 or {batch} (shape[0])")
    cond = _expand(cond, batch)
    both = _concat(cond, _expand(uncond, batch)) if guided else cond

    if not (isinstance(clip_x0, str) and clip_x0 == "sampler"):
        sampler = copy.copy(sampler)  # shallow: tables are shared, the caller's sampler is left as it was
        sampler.clip_x0 = clip_x0
    sampler.set_timesteps(steps)
    timesteps = sampler.timesteps
    assert timesteps is not None, "set_timesteps() sets the timesteps"

    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        x = noise.to(device=device or noise.device, dtype=dtype)
    else:
        x = randn_like_gen(torch.empty(shape, device=device, dtype=dtype), generator)
    ts = timesteps.tolist()
    # Model-time tensors made once, not per step.
    t_batch = timesteps.to(x.device).repeat_interleave(2 * batch if guided else batch).view(len(ts), -1)

    record: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if return_trajectory else None
    states: list[torch.Tensor] | None = [x.cpu()] if return_trajectory else None
    steps_iter = ts
    if progress:
        from tqdm.auto import tqdm

        steps_iter = tqdm(ts, desc=type(sampler).__name__, leave=False)
    autocast = torch.autocast(x.device.type, torch.bfloat16, enabled=precision == "bf16")
    for i, t in enumerate(steps_iter):
        with autocast:
            out = model_fn(torch.cat([x, x]) if guided else x, t_batch[i], both).to(x.dtype)
        if guided:
            out_c, out_u = out.chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        if i == 0 and out.shape != x.shape:
            raise ValueError(
                f"model_fn returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                "it must return one output per input, shaped like x"
            )
        if record is not None:
            record.append((out.cpu(), sampler.predict_x0(out, t, x).cpu()))
        x = sampler.step(out, t, x, generator)
        if states is not None:
            states.append(x.cpu())
    if states is None or record is None:  # not return_trajectory
        return x
    return x, Trajectory(
        x=torch.stack(states),
        timesteps=timesteps.clone(),
        model_output=torch.stack([r[0] for r in record]),
        x0=torch.stack([r[1] for r in record]),
    )
