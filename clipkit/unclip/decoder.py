"""The unCLIP decoder: a small UNet that turns a CLIP image embedding back into pixels.

    cfg = DecoderConfig(embed_dim=128)                 # 32x32 RGB, ~2M parameters
    net = DecoderUNet(cfg)
    out = net(x_t, t, image_embed)                     # (B, 3, 32, 32): x0, eps or v (cfg.prediction)
    # t: (B,) timesteps 0..999 of cfg.schedule; fractional values work (flow sampling maps onto them)
    out = net(x_t, t, image_embed, drop=mask)          # rows where mask is True see the null embedding

The CLIP image embedding enters twice, as in unCLIP (Ramesh et al. 2022, §2.1):
projected and added to the timestep embedding (which modulates every residual
block with a scale and shift), and projected into `context_tokens` extra tokens
that the self-attention layers at low resolution attend to beside the image
positions. Classifier-free guidance needs an unconditional branch, so the net
owns a learned null embedding: training replaces ~10% of the conditions by it
(`drop`), sampling passes `net.null_embedding(B)` as the negative condition.

Speed on CPU comes from `patch_size`: the image is folded 2x2 into channels
(pixel_unshuffle) before the first convolution and unfolded after the last, so
the UNet's highest resolution is 16x16 for a 32x32 image: about 4x fewer
multiply-adds than a full-resolution UNet of the same width. The shapes world is
flat colour with sharp edges, which a 12-channel output per 2x2 patch renders
without loss. No attention runs at the highest resolution (cost quadratic in
positions, little benefit there).

The same class is the cascade's super-resolution stage (unCLIP §2, Karlo, Imagen):
with `low_res_size` > 0 it also takes the low-resolution image, resized to its own
size and concatenated to x as input channels, and the noise level that was put on
that image (`noise_low_res`), embedded like the timestep. Training draws random
levels (noise-conditioning augmentation) so the upsampler learns not to trust the
low-resolution pixels blindly: at sampling they come from the base decoder, with
its mistakes, under a small fixed level (`config.aug_level`).

    up = DecoderUNet(UpsamplerConfig(image_size=64, low_res_size=32))   # clipkit.unclip.config
    low = noise_low_res(x32, level=0.1, generator=g)                  # (B, 3, 32, 32)
    out = up(x_t, t, low_res=low, aug_level=torch.full((B,), 0.1))    # (B, 3, 64, 64)
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.diffusion import timestep_embedding
from clipkit.unclip.config import DecoderConfig


def noise_low_res(
    low_res: torch.Tensor, level, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """cos(level pi/2) low_res + sin(level pi/2) noise: level 0 leaves the image, 1 is pure noise.

    level: a float or a (B,) tensor in [0, 1]; noise: N(0, I) from `generator` unless given."""
    level = torch.as_tensor(level, dtype=low_res.dtype, device=low_res.device)
    if level.numel() and (level.min() < 0 or level.max() > 1):
        raise ValueError(f"noise levels must lie in [0, 1], got {level.min().item()}..{level.max().item()}")
    if noise is None:
        noise = torch.randn(low_res.shape, generator=generator, dtype=low_res.dtype).to(low_res.device)
    angle = (level * (math.pi / 2)).reshape(-1, *([1] * (low_res.ndim - 1))) if level.ndim else level * (math.pi / 2)
    return torch.cos(angle) * low_res + torch.sin(angle) * noise


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, C, size, size): area average for an integer factor (how the shapes world and most
    image pipelines shrink), else an antialiased bilinear resize."""
    side = x.shape[-1]
    if side == size:
        return x
    if side % size == 0:
        return F.avg_pool2d(x, side // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _groups(channels: int) -> int:
    return 32 if channels % 32 == 0 and channels >= 128 else 8


def _zero_init(conv: nn.Conv2d) -> None:
    """Zero a convolution's weight and bias: the layer outputs 0 until training moves it."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the time(+embedding) vector sets a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        _zero_init(self.conv2)  # each block starts as the identity: stable early training
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ContextAttention(nn.Module):
    """Self-attention over the positions of a feature map plus a few context tokens (keys/values only)."""

    def __init__(self, channels: int, side: int, context_dim: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} is not divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.pos = nn.Parameter(torch.zeros(1, side * side, channels))  # where am I: positions matter here
        self.qkv = nn.Linear(channels, 3 * channels)
        self.ctx_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2) + self.pos  # (B, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        if self.ctx_kv is not None:
            ck, cv = self.ctx_kv(context).chunk(2, dim=-1)  # (B, K, C) each
            k, v = torch.cat([k, ck], 1), torch.cat([v, cv], 1)  # (B, HW+K, C)
        split = lambda z: z.reshape(b, z.shape[1], self.heads, c // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (B, heads, HW, C/heads)
        y = self.out(y.transpose(1, 2).reshape(b, h * w, c))
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class DecoderUNet(nn.Module):
    """UNet denoiser conditioned on a CLIP image embedding (see the module docstring)."""

    embed_mean: torch.Tensor  # buffers (when embed_dim > 0)
    embed_scale: torch.Tensor

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        temb_dim = 4 * ch[0]
        pixels = cfg.in_channels * cfg.patch_size**2
        side = cfg.image_size // cfg.patch_size
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        ctx_dim = ch[-1] if cfg.embed_dim and cfg.context_tokens else 0
        if cfg.embed_dim:
            self.embed_mlp = nn.Sequential(nn.Linear(cfg.embed_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
            if ctx_dim:
                self.context = nn.Linear(cfg.embed_dim, cfg.context_tokens * ctx_dim)
                self.context_norm = nn.LayerNorm(ctx_dim)
            # Unconditional branch for classifier-free guidance; scaled like a real (unit-norm) embedding.
            self.null_embed = nn.Parameter(F.normalize(torch.randn(cfg.embed_dim), dim=0))
            # CLIP embeddings of one dataset share a large common direction and differ in small ones
            # (cosines of 0.9+ between unrelated shapes): standardising each coordinate with the training
            # set's statistics hands the projections the informative part at unit scale. Saved with the
            # weights; the defaults (0, sqrt(D)) just rescale unit vectors to unit-variance coordinates.
            self.register_buffer("embed_mean", torch.zeros(cfg.embed_dim))
            self.register_buffer("embed_scale", torch.full((cfg.embed_dim,), math.sqrt(cfg.embed_dim)))
        if cfg.low_res_size:
            # The low-resolution image enters as extra input channels, its noise level beside the timestep.
            pixels += cfg.in_channels * cfg.patch_size**2
            self.aug_mlp = nn.Sequential(nn.Linear(ch[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))

        self.conv_in = nn.Conv2d(pixels, ch[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, c = [], ch[0]
        for level, width in enumerate(ch):
            s = side >> level
            for _ in range(cfg.layers_per_block):
                blocks = nn.ModuleList([ResBlock(c, width, temb_dim, cfg.dropout)])
                if cfg.attention_levels[level]:
                    blocks.append(ContextAttention(width, s, ctx_dim, cfg.heads))
                self.down.append(blocks)
                c = width
                skips.append(c)
            if level < len(ch) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
        s = side >> (len(ch) - 1)
        self.mid = nn.ModuleList(
            [
                ResBlock(c, c, temb_dim, cfg.dropout),
                ContextAttention(c, s, ctx_dim, cfg.heads),
                ResBlock(c, c, temb_dim, cfg.dropout),
            ]
        )
        for level in reversed(range(len(ch))):
            width, s = ch[level], side >> level
            for _ in range(cfg.layers_per_block):
                blocks = nn.ModuleList([ResBlock(c + skips.pop(), width, temb_dim, cfg.dropout)])
                if cfg.attention_levels[level]:
                    blocks.append(ContextAttention(width, s, ctx_dim, cfg.heads))
                self.up.append(blocks)
                c = width
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)])
                )
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels * cfg.patch_size**2, 3, padding=1)
        _zero_init(self.conv_out)

    @torch.no_grad()
    def set_embedding_stats(self, embeddings: torch.Tensor) -> None:
        """Standardise conditions with the mean / std per coordinate of (N, D) training embeddings."""
        e = F.normalize(embeddings.float(), dim=-1)
        std = e.std(0)
        std = std.clamp_min(0.1 * float(std.median()) + 1e-8)  # no blow-up of (near-)constant coordinates
        self.embed_mean.copy_(e.mean(0))
        self.embed_scale.copy_(1.0 / std)

    def null_embedding(self, batch: int) -> torch.Tensor:
        """(batch, embed_dim): the unconditional condition for guidance."""
        if not self.config.embed_dim:
            raise ValueError("this network takes no embedding (embed_dim=0): it has no null embedding")
        return self.null_embed[None].expand(batch, -1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        image_embed: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        aug_level: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W) noised images, t (B,) or scalar timesteps, image_embed (B, D); same shape out.
        An upsampler also takes low_res (B, C, h, w) and its noise level aug_level ((B,) or a float in [0, 1])."""
        cfg = self.config
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        temb = self.time_mlp(timestep_embedding(t, cfg.channels[0]))
        ctx = None
        if cfg.embed_dim:
            if image_embed is None or image_embed.shape != (b, cfg.embed_dim):
                got = None if image_embed is None else tuple(image_embed.shape)
                raise ValueError(f"image_embed has shape {got}; expected ({b}, {cfg.embed_dim})")
            e = image_embed.to(self.null_embed.dtype)
            if drop is not None:
                e = torch.where(drop[:, None], self.null_embed[None], e)
            e = (e - self.embed_mean) * self.embed_scale
            temb = temb + self.embed_mlp(e)
            if cfg.context_tokens:
                ctx = self.context_norm(self.context(e).view(b, cfg.context_tokens, -1))
        if cfg.low_res_size:
            if low_res is None or aug_level is None:
                raise ValueError(
                    "this is an upsampler (low_res_size > 0): pass low_res= (B, C, h, w) and "
                    "aug_level= (its noise level, see noise_low_res)"
                )
            if low_res.ndim != 4 or low_res.shape[:2] != x.shape[:2]:
                raise ValueError(f"low_res has shape {tuple(low_res.shape)}; expected ({b}, {x.shape[1]}, h, w)")
            if low_res.shape[-2:] != x.shape[-2:]:
                low_res = F.interpolate(low_res.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, low_res.to(x.dtype)], dim=1)
            level = torch.as_tensor(aug_level, device=x.device, dtype=torch.float32)
            level = level.expand(b) if level.ndim == 0 else level
            temb = temb + self.aug_mlp(timestep_embedding(level, cfg.channels[0], scale=1000.0))

        h = self.conv_in(F.pixel_unshuffle(x, self.config.patch_size) if self.config.patch_size > 1 else x)
        skips = []
        for blocks in self.down:
            blocks = cast(nn.ModuleList, blocks)
            if len(blocks) == 1 and isinstance(blocks[0], nn.Conv2d):  # downsample
                h = blocks[0](h)
                continue
            h = blocks[0](h, temb)
            if len(blocks) > 1:
                h = blocks[1](h, ctx)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb), ctx), temb)
        for blocks in self.up:
            blocks = cast(nn.ModuleList, blocks)
            if isinstance(blocks[0], nn.Upsample):
                h = blocks[1](blocks[0](h))
                continue
            h = blocks[0](torch.cat([h, skips.pop()], dim=1), temb)
            if len(blocks) > 1:
                h = blocks[1](h, ctx)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(h, self.config.patch_size) if self.config.patch_size > 1 else h
