"""A tiny MLP denoiser for 2-D points, conditioned on time and class, and its few-second training.

One network serves both guidance branches: during training the class is
replaced by NULL_CLASS with probability `p_uncond`, so model(x, t, NULL_CLASS)
is the unconditional model and model(x, t, class) the conditional one. It trains
through the one run setup (clipkit.train.trainer) like every model: fresh spiral
points each step, AdamW at a high lr cosine-decayed to 0, no gradient clipping,
a run folder with its metrics (every step's loss) and a final checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from clipkit.diffusion import FlowProcess, NoiseSchedule, diffusion_loss, timestep_embedding
from clipkit.labs.spiral.spiral import CLASSES, NULL_CLASS, sample_spiral
from clipkit.train import loop
from clipkit.train.config import TrainConfig
from clipkit.train.trainer import Trainer

PROCESSES = ("ddpm", "flow")


class SpiralDenoiser(nn.Module):
    """MLP: (x (B, 2), t (B,), class (B,) long) -> (B, 2) prediction (epsilon or velocity).

    time_scale maps the sampler's time to the embedding's range: 1 for integer timesteps,
    1000 for flow matching's sigma in [0, 1].
    """

    def __init__(
        self,
        hidden: int = 128,
        depth: int = 5,
        time_dim: int = 32,
        time_scale: float = 1.0,
        coord_dim: int = 32,
        coord_scale: float = 25.0,
    ):
        super().__init__()
        self.time_dim, self.time_scale = time_dim, time_scale
        self.coord_dim, self.coord_scale = coord_dim, coord_scale
        # Sinusoidal features of each coordinate let a small MLP draw a thin curve in a few hundred
        # steps (Fourier features, Tancik et al. 2020; as tiny-diffusion does for 2-D toys).
        self.inp = nn.Linear(2 + 2 * coord_dim if coord_dim else 2, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(len(CLASSES) + 1, hidden)  # last row: the learned null class
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = torch.full((x.shape[0],), NULL_CLASS, dtype=torch.long, device=x.device)
        emb = self.time(timestep_embedding(t, self.time_dim, scale=self.time_scale))
        feats = [x]
        if self.coord_dim:
            feats += [
                timestep_embedding(x[:, i], self.coord_dim, max_period=1e4, scale=self.coord_scale) for i in range(2)
            ]
        h = self.inp(torch.cat(feats, dim=-1)) + emb + self.label(cond)  # (B, hidden)
        for block in self.blocks:
            h = h + block(h)  # residual keeps deep-ish MLPs trainable
        return self.out(h)


@dataclass
class ToyTrainConfig(TrainConfig):
    out_dir: str = "runs/spiral/models/ddpm"
    process: str = "ddpm"  # "ddpm" (a linear NoiseSchedule) or "flow" (a FlowProcess)
    prediction_type: str | None = None  # None: the process's own (epsilon for ddpm, velocity for flow)
    max_steps: int | None = 1000
    batch_size: int = 512
    lr: float = 1e-2  # high, then cosine-decayed: a 2-D toy converges in ~1000 steps
    weight_decay: float = 0.0
    beta2: float = 0.999  # torch's AdamW defaults
    eps: float = 1e-8
    warmup_steps: int = 0  # cosine decay to 0 from the first step: the last steps at a small lr act
    # like the EMA a bigger model would use
    grad_clip: float | None = None
    log_every: int = 1  # every step's loss is in metrics.jsonl
    keep_checkpoints: int = 1
    progress: bool = False
    p_uncond: float = 0.3  # condition dropout, so the same model is also unconditional
    hidden: int = 128
    depth: int = 5
    coord_dim: int = 32  # 0: raw coordinates only
    num_train_timesteps: int = 1000

    def validate(self) -> None:
        super().validate()
        if self.process not in PROCESSES:
            raise ValueError(f"unknown toy process {self.process!r}; choose one of {PROCESSES}")
        if self.max_steps is None:
            raise ValueError("max_steps is null; the spiral draws fresh points every step, so give it max_steps")


def train_spiral_model(cfg: ToyTrainConfig | None = None) -> tuple[SpiralDenoiser, dict]:
    """Train a class-conditional spiral denoiser; returns (model in eval mode, stats with the loss curve).

    The run folder is cfg.out_dir; num_threads None keeps the caller's torch threads."""
    cfg = cfg or ToyTrainConfig()
    cfg.validate()
    if cfg.num_threads is None:
        cfg = dataclasses.replace(cfg, num_threads=torch.get_num_threads())
    t0 = time.perf_counter()
    with Trainer(cfg, f"spiral-{cfg.process}") as trainer:
        process = NoiseSchedule("linear", cfg.num_train_timesteps) if cfg.process == "ddpm" else FlowProcess()
        model = SpiralDenoiser(
            cfg.hidden, cfg.depth, time_scale=1.0 if cfg.process == "ddpm" else 1000.0, coord_dim=cfg.coord_dim
        )  # after the trainer's seed
        trainer.prepare(model, num_samples=None)
        device = trainer.accelerator.device
        g = torch.Generator().manual_seed(cfg.seed)  # the points and the noise, in one stream
        if "generator" in trainer.state:  # resumed: continue the stream
            g.set_state(torch.tensor(trainer.state["generator"], dtype=torch.uint8))

        def next_batches() -> list:
            return [tuple(t.to(device) for t in sample_spiral(cfg.batch_size, g)) for _ in range(cfg.grad_accum)]

        def step_losses(net, micro):
            for x0, labels in micro:
                loss = diffusion_loss(
                    net,
                    process,
                    x0,
                    labels,
                    prediction_type=cfg.prediction_type,
                    p_uncond=cfg.p_uncond,
                    null_cond=NULL_CLASS,
                    generator=g,
                )
                yield loss / len(micro), None

        trainer.fit(
            loop.Task(
                next_batches=next_batches,
                step_losses=step_losses,
                desc=trainer.desc,
                data_state=lambda: {"generator": g.get_state().tolist()},
            )
        )
        losses = [r["loss"] for r in trainer.run.metrics.rows() if "loss" in r]
        trainer.write_summary({"steps": trainer.step, "final_loss": losses[-1] if losses else None})
    model.eval()
    stats = {
        "config": asdict(cfg),
        "seconds": round(time.perf_counter() - t0, 2),
        "final_loss": round(sum(losses[-100:]) / min(100, len(losses)), 5),
        "losses": losses,
    }
    return model, stats
