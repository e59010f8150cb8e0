"""The forward (noising) process of discrete-time diffusion, and what a model is trained to predict.

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise,    t = 0 .. N-1,   abar_t = prod_{s<=t} (1 - beta_s)

`NoiseSchedule` holds the betas and their cumulative products, and is a *process*
like flow.py's FlowProcess: `sample_t` (training times), `signal_noise(t, x)` (the a, s
of x_t = a x0 + s noise), `add_noise` and `target(x0, noise, t, prediction_type)`
("epsilon", "sample" or "v"; parameterization.py holds the algebra).

Tables are kept in float64 (the cumulative product loses digits in float32
near t = N-1) and cast to the data's dtype where they meet tensors.
"""

from __future__ import annotations

import math

import torch

from clipkit.diffusion.names import SCHEDULE_KINDS
from clipkit.diffusion.parameterization import ForwardProcess, per_sample


def _cosine_betas(n: int, max_beta: float = 0.999, s: float = 0.008) -> torch.Tensor:
    # Nichol & Dhariwal (2021), eq. 17: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas from the
    # ratios of consecutive abar, capped so the last step does not destroy everything at once.
    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=torch.float64)


class NoiseSchedule(ForwardProcess):
    """Betas and cumulative alphas of a discrete diffusion process with `num_train_timesteps` steps.

    kind: "linear" (betas linspace(beta_start, beta_end), DDPM's 1e-4 -> 0.02),
          "scaled_linear" (linspace in sqrt(beta), Stable Diffusion's, pass its 0.00085 / 0.012),
          "cosine" (squared cosine of Nichol & Dhariwal, beta capped at 0.999; diffusers'
          "squaredcos_cap_v2"), "sigmoid" (sigmoid(linspace(-6, 6)) rescaled to
          [beta_start, beta_end]; GeoDiff's, as in diffusers).
    shift: divide the signal-to-noise ratio of every timestep by shift**2 (log-SNR moves by
          -2 log shift): the resolution shift of simple diffusion (Hoogeboom et al. 2023) and
          SD3. Larger images keep more of their content under the same per-pixel noise, so they
          want shift > 1 (e.g. 2 for twice the side of the image the schedule was made for);
          shift < 1 spends more of the steps at low noise. 1.0 is the schedule as published.
    """

    def __init__(
        self,
        kind: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        shift: float = 1.0,
    ):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start!r}, {beta_end!r}")
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive number (1.0 = no shift), got {shift!r}")
        n = num_train_timesteps
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        elif kind == "cosine":
            betas = _cosine_betas(n)
        else:  # sigmoid
            betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
        if shift != 1.0:
            # abar / (1 - abar) -> abar / (1 - abar) / shift^2, then the betas of the shifted abar
            abar = torch.cumprod(1.0 - betas, 0)
            abar = abar / (abar + shift**2 * (1.0 - abar))
            betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
        self.kind, self.shift = kind, float(shift)
        self.num_train_timesteps = n
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = betas  # (N,) float64
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)  # (N,) float64, abar_t
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    def __repr__(self) -> str:
        shift = f", shift={self.shift}" if self.shift != 1.0 else ""
        return f"NoiseSchedule({self.kind!r}, num_train_timesteps={self.num_train_timesteps}{shift})"

    # --- per-timestep coefficients, shaped to broadcast against x -----------------------------
    def _coef(self, table: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=table.device).long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got min {int(t.min())} max {int(t.max())}"
            )
        return per_sample(table[t].to(device=x.device, dtype=x.dtype), x)  # (B, 1, 1, ...)

    def signal_noise(self, t: int | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) broadcastable against x; t an int or a (B,) tensor."""
        return self._coef(self.sqrt_alphas_cumprod, t, x), self._coef(self.sqrt_one_minus_alphas_cumprod, t, x)

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) at t (for min-SNR style loss weights)."""
        a = self.alphas_cumprod[torch.as_tensor(t).long()]
        return a / (1 - a)

    # --- the process interface (FlowProcess offers the same) --------------------------------
    default_prediction_type = "epsilon"

    def sample_t(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """(B,) long training timesteps, uniform in 0..N-1."""
        t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)
        return t.to(device) if device is not None else t

    def timestep_of(self, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """The fractional timesteps whose abar (linearly interpolated in the table) equals `alphas_cumprod`;
        values outside the table's range map to its ends (0 or N-1). float64 in, float64 out."""
        table = self.alphas_cumprod.flip(0).to(alphas_cumprod.device)  # increasing, for searchsorted
        n = len(table)
        abar = alphas_cumprod.double()
        i = torch.searchsorted(table, abar).clamp(1, n - 1)
        lo, hi = table[i - 1], table[i]
        frac = ((abar - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        return (n - 1) - ((i - 1).double() + frac)
