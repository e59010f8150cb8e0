"""What every sampler shares: the step interface, timestep spacings and x0 clipping.

A sampler is a small object with one algorithm in it (diffusers' scheduler
design). The loop in sampling.py drives any of them the same way:

    sampler.set_timesteps(n)              # chooses sampler.timesteps (model time, descending)
    x = noise * sampler.init_noise_sigma
    for t in sampler.timesteps.tolist():
        out = model_fn(x, t_batch, cond)  # t_batch = torch.full((B,), t, dtype=sampler.timesteps.dtype)
        x = sampler.step(out, t, x, generator)

`t` is whatever `sampler.timesteps` holds: integer training timesteps
0..N-1 for DDPM / DDIM, the noise level sigma in [0, 1] for flow matching.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# None: no clipping (embeddings); c: clamp to [-c, c] (pixels in [-1, 1]: 1.0);
# (lo, hi): clamp to a range; a callable x0 -> x0 (e.g. renormalise onto the unit sphere).
ClipSpec = Union[None, float, Sequence[float], Callable[[torch.Tensor], torch.Tensor]]


def make_x0_transform(clip_x0: ClipSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Turn a `clip_x0` setting into a function applied to every x0 estimate (or None)."""
    if clip_x0 is None or callable(clip_x0):
        return clip_x0
    if isinstance(clip_x0, (int, float)) and not isinstance(clip_x0, bool):
        if clip_x0 <= 0:
            raise ValueError(f"clip_x0 as a number is the half-width c of [-c, c] and must be > 0, got {clip_x0!r}")
        lo, hi = -float(clip_x0), float(clip_x0)
    elif isinstance(clip_x0, Sequence) and len(clip_x0) == 2:
        lo, hi = float(clip_x0[0]), float(clip_x0[1])
        if not lo < hi:
            raise ValueError(f"clip_x0 range must have lo < hi, got {tuple(clip_x0)!r}")
    else:
        raise TypeError(f"clip_x0 must be None, a number c, a (lo, hi) pair or a callable; got {clip_x0!r}")
    return lambda x0: x0.clamp(lo, hi)


def spaced_timesteps(num_train_timesteps: int, n: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """n descending integer timesteps out of 0..N-1 (the spacings of Lin et al. 2023, Table 2).

    leading:  0, N//n, 2N//n, ... (+ offset)    never visits t = N-1 (DDIM paper, diffusers' default)
    trailing: N-1, N-1-N/n, ...                 starts from pure noise; ends at t = N/n - 1
    linspace: round(linspace(0, N-1, n))        both ends
    """
    N = num_train_timesteps
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of sampling steps must be a positive int, got {n!r}")
    if n > N:
        raise ValueError(f"cannot take {n} sampling steps out of a schedule of {N} training timesteps; "
                         f"choose 1..{N}")
    if spacing == "leading":
        ts = [i * (N // n) + steps_offset for i in range(n)]
    elif spacing == "trailing":
        ts = [round(N - i * N / n) - 1 for i in range(n)][::-1]
    elif spacing == "linspace":
        ts = torch.linspace(0, N - 1, n, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {TIMESTEP_SPACINGS}")
    ts = sorted(set(ts), reverse=True)
    if len(ts) != n or ts[0] >= N or ts[-1] < 0:
        raise ValueError(f"{spacing!r} spacing with steps_offset={steps_offset} gives invalid timesteps "
                         f"for n={n}, N={N}: {ts[:3]}...{ts[-3:]}")
    return ts


class Sampler:
    """Base class: holds `timesteps` and the x0 transform; subclasses implement `set_timesteps` and `step`."""

    init_noise_sigma = 1.0        # x_T = init_noise_sigma * N(0, I) for all our samplers
    prediction_type = "epsilon"

    def __init__(self, clip_x0: ClipSpec = None):
        self.clip_x0 = clip_x0
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    @property
    def clip_x0(self) -> ClipSpec:
        return self._clip_x0

    @clip_x0.setter
    def clip_x0(self, value: ClipSpec) -> None:
        self._x0_transform = make_x0_transform(value)
        self._clip_x0 = value

    def _check_ready(self) -> None:
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(n) before step()")

    def _index(self, t) -> int:
        # The loop passes the values of self.timesteps back; map them to their position.
        self._check_ready()
        key = t.item() if isinstance(t, torch.Tensor) else t
        try:
            return self._position[key]
        except KeyError:
            raise ValueError(f"t={key!r} is not one of this sampler's timesteps "
                             f"({self.timesteps[:3].tolist()} ... {self.timesteps[-3:].tolist()})") from None

    def set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def step(self, model_output: torch.Tensor, t, x: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predict_x0(self, model_output: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """The clean-sample estimate implied by `model_output` at (x, t), before clipping."""
        raise NotImplementedError

    def model_time(self, t, batch_size: int, device=None) -> torch.Tensor:
        """The (B,) time tensor a model receives at timestep t (long for discrete, float sigma for flow)."""
        return torch.full((batch_size,), t, dtype=self.timesteps.dtype, device=device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.num_inference_steps})"


def randn_like_gen(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) shaped like x; with a generator the draw is reproducible (same as diffusers' randn_tensor on CPU)."""
    if generator is not None and generator.device.type != x.device.type:
        # A CPU generator for a GPU tensor: draw on CPU, move (reproducible across devices).
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
