"""A tiny MLP denoiser for 2-D points, conditioned on time and class, and its few-second training loop.

One network serves both guidance branches: during training the class is
replaced by NULL_CLASS with probability `p_uncond`, so model(x, t, NULL_CLASS)
is the unconditional model and model(x, t, class) the conditional one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from clipkit.diffusion import FlowProcess, NoiseSchedule, diffusion_loss, timestep_embedding
from clipkit.labs.spiral.spiral import CLASSES, NULL_CLASS, sample_spiral


class SpiralDenoiser(nn.Module):
    """MLP: (x (B, 2), t (B,), class (B,) long) -> (B, 2) prediction (epsilon or velocity).

    time_scale maps the sampler's time to the embedding's range: 1 for integer timesteps,
    1000 for flow matching's sigma in [0, 1].
    """

    def __init__(self, hidden: int = 128, depth: int = 5, time_dim: int = 32, time_scale: float = 1.0,
                 coord_dim: int = 32, coord_scale: float = 25.0):
        super().__init__()
        self.time_dim, self.time_scale = time_dim, time_scale
        self.coord_dim, self.coord_scale = coord_dim, coord_scale
        # Sinusoidal features of each coordinate let a small MLP draw a thin curve in a few hundred
        # steps (Fourier features, Tancik et al. 2020; as tiny-diffusion does for 2-D toys).
        self.inp = nn.Linear(2 + 2 * coord_dim if coord_dim else 2, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(len(CLASSES) + 1, hidden)      # last row: the learned null class
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = torch.full((x.shape[0],), NULL_CLASS, dtype=torch.long, device=x.device)
        emb = self.time(timestep_embedding(t, self.time_dim, scale=self.time_scale))
        feats = [x]
        if self.coord_dim:
            feats += [timestep_embedding(x[:, i], self.coord_dim, max_period=1e4, scale=self.coord_scale)
                      for i in range(2)]
        h = self.inp(torch.cat(feats, dim=-1)) + emb + self.label(cond)      # (B, hidden)
        for block in self.blocks:
            h = h + block(h)                                     # residual keeps deep-ish MLPs trainable
        return self.out(h)


@dataclass(frozen=True)
class ToyTrainConfig:
    process: str = "ddpm"        # "ddpm" (a linear NoiseSchedule) or "flow" (a FlowProcess)
    prediction_type: str | None = None   # None: the process's own (epsilon for ddpm, velocity for flow)
    steps: int = 1000
    batch_size: int = 512
    lr: float = 1e-2             # high, then cosine-decayed: a 2-D toy converges in ~1000 steps
    p_uncond: float = 0.3        # condition dropout, so the same model is also unconditional
    hidden: int = 128
    depth: int = 5
    coord_dim: int = 32          # 0: raw coordinates only
    num_train_timesteps: int = 1000
    seed: int = 0


def train_spiral_model(cfg: ToyTrainConfig = ToyTrainConfig()) -> tuple[SpiralDenoiser, dict]:
    """Train a class-conditional spiral denoiser; returns (model in eval mode, stats with the loss curve)."""
    if cfg.process not in ("ddpm", "flow"):
        raise ValueError(f"unknown toy process {cfg.process!r}; choose 'ddpm' or 'flow'")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    process = NoiseSchedule("linear", cfg.num_train_timesteps) if cfg.process == "ddpm" else FlowProcess()
    model = SpiralDenoiser(cfg.hidden, cfg.depth, time_scale=1.0 if cfg.process == "ddpm" else 1000.0,
                           coord_dim=cfg.coord_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    # Cosine decay to 0: the last steps at a small lr act like the EMA a bigger model would use.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    losses, t0 = [], time.perf_counter()
    model.train()
    for _ in range(cfg.steps):
        x0, labels = sample_spiral(cfg.batch_size, g)
        loss = diffusion_loss(model, process, x0, labels, prediction_type=cfg.prediction_type,
                              p_uncond=cfg.p_uncond, null_cond=NULL_CLASS, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    stats = {"config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 2),
             "final_loss": round(sum(losses[-100:]) / min(100, len(losses)), 5), "losses": losses}
    return model, stats
