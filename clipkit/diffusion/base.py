"""What every sampler shares (x0 estimates, clipping, the step itself) and the discrete samplers' base.

A sampler is a small object with one algorithm in it (diffusers' scheduler
design). The loop in sampling.py drives any of them the same way:

    sampler.set_timesteps(n)              # chooses sampler.timesteps (model time, descending)
    x = noise                             # x_T ~ N(0, I) for every sampler here
    for t in sampler.timesteps.tolist():
        out = model_fn(x, t_batch, cond)  # t_batch = torch.full((B,), t, dtype=sampler.timesteps.dtype)
        x = sampler.step(out, t, x, generator)

`t` is whatever `sampler.timesteps` holds: integer training timesteps 0..N-1 for DDPM / DDIM,
sigma in [0, 1] for flow matching. No steps until `set_timesteps(n)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from clipkit.diffusion.names import TIMESTEP_SPACINGS, check_prediction_type
from clipkit.diffusion.parameterization import to_x0_eps
from clipkit.diffusion.schedule import NoiseSchedule

# None: no clipping (embeddings); c: clamp to [-c, c] (pixels in [-1, 1]: 1.0);
# (lo, hi): clamp to a range; a callable x0 -> x0 (e.g. renormalise onto the unit sphere, or
# DynamicThreshold(0.995)); "dynamic": DynamicThreshold() with Imagen's settings.
ClipSpec = float | str | Sequence[float] | Callable[[torch.Tensor], torch.Tensor] | None

# The model contract (the package docstring): model_fn(x, t, cond) -> output shaped like x.
ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
# A condition: a tensor, a dict / tuple of conditions, or None.
Cond = Any
# A step's time as the loop passes it back: a long timestep (DDPM / DDIM) or a sigma (flow), or a tensor of it.
Timestep = int | float | torch.Tensor


class DynamicThreshold:
    """Imagen's dynamic thresholding of x0 estimates (Saharia et al. 2022, section 2.3).

        sampler = DDIMSampler(schedule, prediction_type="sample", clip_x0=DynamicThreshold(0.995))

    Per sample, s = the `percentile` quantile of |x0|, at least `max_value`; x0 is clamped
    to [-s, s] and divided by s. Where x0 stays inside [-1, 1] nothing changes (s = 1: the
    static clip); where guidance pushes it out, the whole image is scaled back instead of
    saturating at the clip, which keeps colours from washing into flat extremes.
    """

    def __init__(self, percentile: float = 0.995, max_value: float = 1.0):
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile={percentile!r}; expected a quantile in (0, 1], e.g. 0.995")
        if not max_value > 0:
            raise ValueError(f"max_value={max_value!r}; expected > 0 (1.0 for pixels in [-1, 1])")
        self.percentile, self.max_value = float(percentile), float(max_value)

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        flat = x0.detach().abs().flatten(1).float()  # (B, D)
        s = torch.quantile(flat, self.percentile, dim=1).clamp(min=self.max_value)
        s = s.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s * self.max_value

    def __repr__(self) -> str:
        return f"DynamicThreshold({self.percentile}, max_value={self.max_value})"


def make_x0_transform(clip_x0: ClipSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Turn a `clip_x0` setting into a function applied to every x0 estimate (or None)."""
    if isinstance(clip_x0, str):
        if clip_x0 != "dynamic":
            raise ValueError(f"clip_x0={clip_x0!r}; the only named setting is 'dynamic' (Imagen's thresholding)")
        return DynamicThreshold()
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
    check_steps(n)
    if n > N:
        raise ValueError(f"cannot take {n} sampling steps out of a schedule of {N} training timesteps; choose 1..{N}")
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
        raise ValueError(
            f"{spacing!r} spacing with steps_offset={steps_offset} gives invalid timesteps "
            f"for n={n}, N={N}: {ts[:3]}...{ts[-3:]}"
        )
    return ts


class Sampler:
    """The shared step. Every sampler here moves x as

        x_prev = c0 * x0_hat + ct * x + std * z,      z ~ N(0, I)

    (DDPM's posterior mean, DDIM's jump, an Euler step of flow matching alike), where x0_hat
    comes from the model output through parameterization.py and is clipped by `clip_x0`
    (the noise estimate then follows the clipped x0: guided-diffusion's choice, diffusers'
    `use_clipped_model_output=True`). A subclass's `set_timesteps(n)` gives `_set_grid` the
    timesteps, the (a, s) of x_t = a x0 + s noise and the (c0, ct, std) of each step.
    """

    _repr_fields: tuple[str, ...] = ("prediction_type",)

    def __init__(self, prediction_type: str, clip_x0: ClipSpec = None):
        self.prediction_type = prediction_type
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

    def set_timesteps(self, n: int) -> None:
        """Prepare n sampling steps (a subclass's grid through `_set_grid`)."""
        raise NotImplementedError

    def _set_grid(self, timesteps: torch.Tensor, signal_noise: list[tuple[float, float]], coefs: list[tuple]) -> None:
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self._position = {t: i for i, t in enumerate(timesteps.tolist())}
        self._signal_noise, self._coefs = signal_noise, coefs
        # x0_hat = alpha * x + beta * output for every prediction type: read (alpha, beta) off the helper
        pt = self.prediction_type
        self._x0_affine = [
            (to_x0_eps(0.0, 1.0, a, s, pt)[0], to_x0_eps(1.0, 0.0, a, s, pt)[0]) for a, s in signal_noise
        ]

    def _index(self, t) -> int:
        # The loop passes the values of self.timesteps back; map them to their position.
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(n) before step()")
        key = t.item() if isinstance(t, torch.Tensor) else t
        try:
            return self._position[key]
        except KeyError:
            raise ValueError(
                f"t={key!r} is not one of this sampler's timesteps "
                f"({self.timesteps[:3].tolist()} ... {self.timesteps[-3:].tolist()})"
            ) from None

    def predict_x0(self, model_output: torch.Tensor, t: Timestep, x: torch.Tensor) -> torch.Tensor:
        """The clean-sample estimate alpha * x + beta * model_output at (x, t), before clipping."""
        alpha, beta = self._x0_affine[self._index(t)]
        if alpha == 0.0 and beta == 1.0:  # x0 prediction
            return model_output
        return torch.add(x * alpha, model_output, alpha=beta)

    def mean_std(self, model_output: torch.Tensor, t: Timestep, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The step's deterministic part c0 * x0_hat + ct * x and the std of its noise."""
        check_output(model_output, x)
        i = self._index(t)
        c0, ct, std = self._coefs[i]
        if self._x0_transform is None:  # fold x0_hat into fused ops on (x, output)
            alpha, beta = self._x0_affine[i]
            cx = c0 * alpha + ct  # 1 for a flow velocity (an Euler step): skip the multiply
            return torch.add(x if abs(cx - 1.0) < 1e-12 else x * cx, model_output, alpha=c0 * beta), std
        return torch.add(x * ct, self._x0_transform(self.predict_x0(model_output, t, x)), alpha=c0), std

    def step(
        self, model_output: torch.Tensor, t: Timestep, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x at the next timestep; `generator` draws the noise of stochastic samplers (DDPM, DDIM eta > 0)."""
        mean, std = self.mean_std(model_output, t, x)
        return mean if std == 0.0 else torch.add(mean, randn_like_gen(x, generator), alpha=std)

    def __repr__(self) -> str:
        fields = "".join(f"{k}={getattr(self, k)!r}, " for k in self._repr_fields)
        return f"{type(self).__name__}({fields}steps={self.num_inference_steps})"


class DiscreteSampler(Sampler):
    """Base of DDPM and DDIM: a NoiseSchedule and n of its timesteps (the model's time: long, 0..N-1).

    Subclasses give `_step_coefficients(abar_t, abar_prev, last) -> (c0, ct, std)` between timestep t
    and the next one (abar_prev = final_alpha_cumprod after the last step).
    """

    final_alpha_cumprod = 1.0  # land on clean data (diffusers' set_alpha_to_one=True)

    def __init__(
        self,
        schedule: NoiseSchedule | str,
        prediction_type: str,
        timestep_spacing: str,
        clip_x0: ClipSpec,
        steps_offset: int,
    ):
        super().__init__(check_prediction_type(prediction_type, discrete=True), clip_x0)
        self.schedule = NoiseSchedule(schedule) if isinstance(schedule, str) else schedule
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; choose one of {TIMESTEP_SPACINGS}")
        self.timestep_spacing, self.steps_offset = timestep_spacing, steps_offset

    def _step_coefficients(self, a_t: float, a_prev: float, last: bool) -> tuple[float, float, float]:
        """(c0, ct, std) of the step from abar_t to abar_prev (the subclass's update rule)."""
        raise NotImplementedError

    def set_timesteps(self, n: int) -> None:
        """Use n of the schedule's N training timesteps (descending, spaced by `timestep_spacing`)."""
        ts = spaced_timesteps(self.schedule.num_train_timesteps, n, self.timestep_spacing, self.steps_offset)
        table = self.schedule.alphas_cumprod.tolist()  # Python floats: a step costs a few tensor ops
        abar = [table[t] for t in ts]
        coefs = [
            self._step_coefficients(a, p, i == len(ts) - 1)
            for i, (a, p) in enumerate(zip(abar, abar[1:] + [self.final_alpha_cumprod]))
        ]
        self._set_grid(torch.tensor(ts, dtype=torch.long), [(math.sqrt(a), math.sqrt(1.0 - a)) for a in abar], coefs)


def check_steps(n) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of sampling steps must be a positive int, got {n!r}")
    return n


def check_output(model_output: torch.Tensor, x: torch.Tensor) -> None:
    if model_output.shape != x.shape:
        raise ValueError(f"model output shape {tuple(model_output.shape)} differs from sample shape {tuple(x.shape)}")


def randn_like_gen(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) shaped like x; with a generator the draw is reproducible (same as diffusers' randn_tensor on CPU)."""
    if generator is not None and generator.device.type != x.device.type:
        # A CPU generator for a GPU tensor: draw on CPU, move (reproducible across devices).
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
