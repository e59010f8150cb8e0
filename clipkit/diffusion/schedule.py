"""The forward (noising) process of discrete-time diffusion, and what a model is trained to predict.

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise,    t = 0 .. N-1,   abar_t = prod_{s<=t} (1 - beta_s)

`NoiseSchedule` holds the betas and their cumulative products and converts
between the three usual parameterisations of the model output:

    "epsilon"  the noise                         (DDPM, Ho et al. 2020)
    "sample"   x0 itself                         (DALL-E 2's prior)
    "v"        sqrt(abar) * noise - sqrt(1-abar) * x0   (Salimans & Ho 2022)

Tables are kept in float64 (the cumulative product loses digits in float32
near t = N-1) and cast to the data's dtype where they meet tensors.
Flow matching needs no table; see flow.py.
"""

from __future__ import annotations

import math

import torch

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    return prediction_type


def _cosine_betas(n: int, max_beta: float = 0.999, s: float = 0.008) -> torch.Tensor:
    # Nichol & Dhariwal (2021), eq. 17: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas from the
    # ratios of consecutive abar, capped so the last step does not destroy everything at once.
    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float64)


class NoiseSchedule:
    """Betas and cumulative alphas of a discrete diffusion process with `num_train_timesteps` steps.

    kind: "linear" (betas linspace(beta_start, beta_end), DDPM's 1e-4 -> 0.02),
          "scaled_linear" (linspace in sqrt(beta), Stable Diffusion's, pass its 0.00085 / 0.012),
          "cosine" (squared cosine of Nichol & Dhariwal, beta capped at 0.999; diffusers'
          "squaredcos_cap_v2"), "sigmoid" (sigmoid(linspace(-6, 6)) rescaled to
          [beta_start, beta_end]; GeoDiff's, as in diffusers).
    """

    def __init__(self, kind: str = "linear", num_train_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start!r}, {beta_end!r}")
        n = num_train_timesteps
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
        elif kind == "cosine":
            betas = _cosine_betas(n)
        else:  # sigmoid
            betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
        self.kind = kind
        self.num_train_timesteps = n
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = betas                                   # (N,) float64
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)  # (N,) float64, abar_t
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.kind!r}, num_train_timesteps={self.num_train_timesteps})"

    # --- per-timestep coefficients, shaped to broadcast against x -----------------------------
    def _coef(self, table: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=table.device).long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], "
                             f"got min {int(t.min())} max {int(t.max())}")
        c = table[t].to(device=x.device, dtype=x.dtype)
        if c.ndim == 0:
            return c
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"t has {c.shape[0]} entries but x has batch size {x.shape[0]}")
        return c.reshape(-1, *([1] * (x.ndim - 1)))           # (B, 1, 1, ...)

    def signal_noise(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) broadcastable against x; t an int or a (B,) tensor."""
        return self._coef(self.sqrt_alphas_cumprod, t, x), self._coef(self.sqrt_one_minus_alphas_cumprod, t, x)

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) at t (for min-SNR style loss weights)."""
        a = self.alphas_cumprod[torch.as_tensor(t).long()]
        return a / (1 - a)

    # --- forward process and targets ---------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. t: an int or a (B,) tensor of ints."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
        a, s = self.signal_noise(t, x0)
        return a * x0 + s * noise

    def get_velocity(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
        a, s = self.signal_noise(t, x0)
        return a * noise - s * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t, prediction_type: str = "epsilon") -> torch.Tensor:
        """What a model with this `prediction_type` should output for x_t = add_noise(x0, noise, t)."""
        check_prediction_type(prediction_type)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        return self.get_velocity(x0, noise, t)

    def predict_x0_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t,
                       prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
        """Invert `target`: from a model output at (x_t, t) recover (x0, noise) estimates."""
        check_prediction_type(prediction_type)
        a, s = self.signal_noise(t, x_t)
        if prediction_type == "epsilon":
            eps = model_output
            return (x_t - s * eps) / a, eps
        if prediction_type == "sample":
            x0 = model_output
            return x0, (x_t - a * x0) / s
        v = model_output   # a^2 + s^2 = 1 makes the inverse a rotation
        return a * x_t - s * v, a * v + s * x_t

    def output_from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, t, prediction_type: str = "epsilon") -> torch.Tensor:
        """The model output that would have predicted `x0` at (x_t, t) (used after clipping x0)."""
        check_prediction_type(prediction_type)
        a, s = self.signal_noise(t, x_t)
        eps = (x_t - a * x0) / s
        return self.target(x0, eps, t, prediction_type)
