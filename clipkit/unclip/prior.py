"""The unCLIP diffusion prior: text embedding -> CLIP image embedding.

    cfg = PriorConfig(embed_dim=128)
    prior = DiffusionPrior(cfg)
    x0_hat = prior(z_t, t, text_embed)            # (B, D) in the prior's scaled space

A decoder-only (causal) transformer reads the sequence
[text embedding, timestep embedding, noised image embedding, learned query]
and the output at the query predicts the clean image embedding directly
(unCLIP §2.2: x0 prediction worked better than epsilon for the prior).

Scaling (DALLE2-pytorch issues 60 and 299): CLIP embeddings are unit vectors,
so each coordinate has variance ~1/D, far below the unit-variance noise. The
prior therefore works on `sqrt(D) * normalize(e)` (unit variance per coordinate)
and sampling renormalises every x0 estimate back onto that sphere, which keeps
DDIM with few steps from drifting off the embedding manifold.

Text-condition dropout (~10%) to a learned null text embedding gives the
unconditional branch for classifier-free guidance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.diffusion import sample, timestep_embedding
from clipkit.unclip.config import PriorConfig
from clipkit.unclip.samplers import make_sampler, noise_schedule


class DiffusionPrior(nn.Module):
    """Causal transformer predicting the clean (scaled) image embedding; see the module docstring."""

    SEQUENCE = 4  # text embedding, time, noised image embedding, query

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = cfg = config
        self.text_in = nn.Linear(cfg.embed_dim, cfg.width)
        self.image_in = nn.Linear(cfg.embed_dim, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.query = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.pos = nn.Parameter(torch.randn(self.SEQUENCE, cfg.width) * 0.02)
        self.null_text = nn.Parameter(F.normalize(torch.randn(cfg.embed_dim), dim=0))
        layer = nn.TransformerEncoderLayer(
            cfg.width,
            cfg.heads,
            int(cfg.width * cfg.mlp_ratio),
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, cfg.embed_dim)
        self.register_buffer(
            "causal", torch.triu(torch.full((self.SEQUENCE, self.SEQUENCE), float("-inf")), 1), persistent=False
        )
        self.schedule = noise_schedule(cfg)

    def null_embedding(self, batch: int) -> torch.Tensor:
        """(batch, D) unit-norm text condition meaning "no text" (the guidance null branch)."""
        return self.null_text[None].expand(batch, -1)

    def to_prior_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings.float(), dim=-1) * self.config.scale

    def from_prior_space(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z.float(), dim=-1)

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, text_embed: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z_t (B, D) noised scaled image embeddings, t (B,) timesteps, text_embed (B, D) unit norm."""
        b, d = z_t.shape
        if d != self.config.embed_dim or text_embed.shape != (b, d):
            raise ValueError(
                f"z_t {tuple(z_t.shape)} / text_embed {tuple(text_embed.shape)}; "
                f"expected (B, {self.config.embed_dim}) both"
            )
        t = torch.as_tensor(t, device=z_t.device)
        t = t.expand(b) if t.ndim == 0 else t
        text = text_embed.to(self.null_text.dtype)
        if drop is not None:
            text = torch.where(drop[:, None], self.null_text[None], text)
        tokens = (
            torch.stack(
                [
                    self.text_in(text * self.config.scale),  # unit variance like z_t
                    self.time_mlp(timestep_embedding(t, self.config.width)),
                    self.image_in(z_t),
                    self.query[None].expand(b, -1),
                ],
                dim=1,
            )
            + self.pos
        )  # (B, 4, W)
        h = self.transformer(tokens, mask=self.causal, is_causal=True)
        return self.out(self.norm(h[:, -1]))  # (B, D)

    @torch.no_grad()
    def sample_embeddings(
        self,
        text_embed: torch.Tensor,
        guidance_scale: float = 2.0,
        steps: int = 32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The prior protocol (ArPrior has the same): (N, D) unit text embeddings -> (N, D) unit image
        embeddings, DDIM with `steps` steps, every x0 estimate renormalised onto the prior's sphere."""
        scale = self.config.scale
        sampler = make_sampler(
            "ddim", self.schedule, self.config.prediction, clip_x0=lambda z: F.normalize(z, dim=-1) * scale
        )
        z = sample(
            self,
            tuple(text_embed.shape),
            sampler,
            steps,
            cond=text_embed,
            uncond=self.null_embedding(1),
            guidance_scale=guidance_scale,
            generator=generator,
            device=text_embed.device,
        )
        return self.from_prior_space(z)
