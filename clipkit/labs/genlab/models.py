"""The lab's three families: a one-shot regressor, a pixel-by-pixel causal transformer, a diffusion UNet.

    ar = PixelAR(PixelARConfig(order="raster"))
    loss = ar.loss(cond, tokens, k=4)                     # every pixel in one pass (block-causal for k > 1)
    tokens = ar.sample(cond, k=4, generator=g)            # 1024 / k network evaluations, KV cache
    oneshot = OneShot(unet_config())                      # prompt -> image in one evaluation (MSE)
    unet = DecoderUNet(unet_config("epsilon"))            # the diffusion family: clipkit.diffusion samplers

Both image networks are the unCLIP decoder's UNet (clipkit.unclip.decoder),
conditioned on the prompt's condition vector where the decoder takes a CLIP
embedding. The one-shot regressor is that UNet run once on a fixed coordinate
image at the last timestep and trained to output the image (x0) with MSE: the
same network and condition as the diffusion model, only the task differs.

PixelAR predicts the palette colour of pixel after pixel in a fixed order
(raster or spread, world.pixel_order) with clipkit.unclip.ar_prior's causal
transformer. k pixels per step: token i reads the colour of the pixel k places
earlier in the order and asks for pixel i; under a block-causal mask (token i
sees the tokens of its own block of k and of earlier blocks) every token's
output depends only on pixels of earlier blocks, so the k pixels of a block are
predicted together from the same context, and training covers all pixels in one
pass. One model is trained for every k in `block_sizes` (one k per batch), so
each k's predictions are the model's own marginals, not a hack of k = 1.
Each token's input also sums embeddings of the colours of its neighbours at
distances `stencil` in the eight directions, where those are already known (a
causal dilated stencil: PixelSNAIL pairs attention with convolutions the same
way); unknown neighbours read as UNKNOWN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.labs.genlab.world import COND_DIM, VOCAB, coordinate_image, pixel_order
from clipkit.unclip.ar_prior import CausalTransformer, KVCache, sample_categorical
from clipkit.unclip.config import DecoderConfig
from clipkit.unclip.decoder import DecoderUNet

UNKNOWN = VOCAB  # the input value of a pixel that is not known yet


def unet_config(prediction: str = "sample", channels: tuple = (32, 64, 64)) -> DecoderConfig:
    """The UNet both image families use: the decoder's, reading the COND_DIM prompt vector."""
    return DecoderConfig(
        embed_dim=COND_DIM,
        channels=channels,
        attention_levels=(False,) + (True,) * (len(channels) - 1),
        heads=4,
        context_tokens=4,
        prediction=prediction,
        schedule="cosine",
    )


class OneShot(nn.Module):
    """prompt -> image in one evaluation: the UNet at its last timestep on a fixed coordinate image."""

    canvas: torch.Tensor  # buffer

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.unet = DecoderUNet(config)
        self.register_buffer("canvas", coordinate_image(config.image_size), persistent=False)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(cond),), self.config.num_train_timesteps - 1, device=cond.device)
        return self.unet(self.canvas.expand(len(cond), -1, -1, -1), t, cond)


@dataclass(frozen=True)
class PixelARConfig:
    side: int = 32
    order: str = "raster"  # raster | spread (world.pixel_order)
    order_seed: int = 0
    width: int = 64
    layers: int = 3
    heads: int = 2
    cond_tokens: int = 4
    stencil: tuple = (1, 2, 4, 8)  # neighbour distances read as input features (() = none)
    block_sizes: tuple = (1, 4, 16, 64)  # k values trained (one per batch) and allowed at sampling
    window: int | None = 64  # pixel tokens attend to the prefix and ~window earlier tokens
    # (None: all earlier tokens; the stencil carries the image beyond)

    def to_json(self) -> dict:
        return {**asdict(self), "stencil": list(self.stencil), "block_sizes": list(self.block_sizes)}


class PixelAR(nn.Module):
    """Causal transformer over palette tokens with k pixels per step (see the module docstring)."""

    order: torch.Tensor  # buffers: the pixel of each sequence index, its inverse,
    rank: torch.Tensor  # and each index's stencil neighbours
    neighbours: torch.Tensor

    def __init__(self, config: PixelARConfig):
        super().__init__()
        self.config = cfg = config
        s, w, n = cfg.side, cfg.width, cfg.side**2
        self.chunk = max(cfg.block_sizes)  # local attention runs on chunks of this many tokens
        for k in cfg.block_sizes:
            if n % k or self.chunk % k:
                raise ValueError(
                    f"block size {k} does not divide the {n} pixels / the largest block; use powers of two"
                )
        order = pixel_order(cfg.order, s, cfg.order_seed)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("rank", torch.empty_like(order).scatter_(0, order, torch.arange(n)), persistent=False)
        offsets = [(dy * d, dx * d) for d in cfg.stencil for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        y, x = order // s, order % s  # by sequence index
        nb = [
            torch.where((y + dy >= 0) & (y + dy < s) & (x + dx >= 0) & (x + dx < s), (y + dy) * s + x + dx, n)
            for dy, dx in offsets
        ]
        self.register_buffer(
            "neighbours", torch.stack(nb, 1) if nb else torch.zeros(n, 0, dtype=torch.long), persistent=False
        )  # (n, S); n = outside
        self.cond = nn.Linear(COND_DIM, cfg.cond_tokens * w)
        self.cond_pos = nn.Parameter(torch.randn(cfg.cond_tokens, w) * 0.02)
        self.value = nn.Embedding(VOCAB + 1, w)  # + UNKNOWN
        self.start = nn.Parameter(torch.randn(w) * 0.02)  # content of "before the start"
        self.content_row, self.content_col = (nn.Parameter(torch.randn(s, w) * 0.02) for _ in range(2))
        self.query_row, self.query_col = (nn.Parameter(torch.randn(s, w) * 0.02) for _ in range(2))
        self.stencil = nn.Embedding(max(1, len(offsets)) * (VOCAB + 1), w)
        self.trunk = CausalTransformer(w, cfg.layers, cfg.heads)
        self.head = nn.Linear(w, VOCAB)
        self._tables: dict = {}

    # -------------------------------------------------------------- inputs
    def _table(self, k: int) -> dict:
        """Per k: each token's content pixel and its known neighbours (n = unknown / outside)."""
        if k not in self._tables:
            cfg, n, dev = self.config, self.config.side**2, self.order.device
            if k not in cfg.block_sizes:
                raise ValueError(f"k={k} was not trained; this model knows block sizes {cfg.block_sizes}")
            i = torch.arange(n, device=dev)
            start = (i // k) * k  # first index of token i's block
            known = self.rank[self.neighbours.clamp_max(n - 1)] < start[:, None]
            neighbours = torch.where(known & (self.neighbours < n), self.neighbours, n)
            content = torch.where(i >= k, self.order[(i - k).clamp_min(0)], n)
            p, c = cfg.cond_tokens, self.chunk
            block = torch.cat([torch.full((p,), -1, device=dev), i // k])
            visible = block[None, :] <= block[:, None]  # block-causal, prefix first
            if cfg.window is not None:  # ... within the window
                seq = torch.cat([torch.full((p,), -1, device=dev), i])
                lo = torch.cat([torch.full((p,), -1, device=dev), (i // c) * c - cfg.window])
                visible &= (seq[None, :] >= lo[:, None]) | (block[None, :] < 0)
            visible[:p] = torch.ones(p, len(block), device=dev).tril().bool()
            table = {"neighbours": neighbours, "content": content, "mask": visible}
            if cfg.window is not None:  # the same pattern chunk by chunk: (n/c, c, p + window + c)
                cols = torch.arange(-cfg.window, c, device=dev)[None, :] + torch.arange(0, n, c, device=dev)[:, None]
                rows = torch.arange(n, device=dev).view(-1, c)
                local = visible[p + rows[:, :, None], p + cols.clamp_min(0)[:, None, :]] & (cols >= 0)[:, None, :]
                table["chunks"] = torch.cat([visible[p + rows, :p], local], 2)
            self._tables[k] = table
        return self._tables[k]

    def _embed(self, pixels: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
        """Input vectors of sequence positions `idx` (L,) given `pixels` (B, n) (any value where unknown)."""
        cfg, s, n = self.config, self.config.side, self.config.side**2
        t = self._table(k)
        padded = torch.cat([pixels, pixels.new_full((len(pixels), 1), UNKNOWN)], 1)  # index n = UNKNOWN
        q = self.order[idx]
        h = self.query_row[q // s] + self.query_col[q % s]  # (L, W): which pixel is asked
        c = t["content"][idx]
        cpos = torch.where(
            (c < n)[:, None],
            self.content_row[c.clamp_max(n - 1) // s] + self.content_col[c.clamp_max(n - 1) % s],
            self.start,
        )
        h = h + cpos + self.value(padded[:, c])  # (B, L, W)
        if cfg.stencil:
            nb = padded[:, t["neighbours"][idx]]  # (B, L, S)
            bag = nb + torch.arange(nb.shape[-1], device=nb.device) * (VOCAB + 1)
            h = h + F.embedding_bag(bag.view(-1, bag.shape[-1]), self.stencil.weight, mode="sum").view(h.shape)
        return h

    def _local_attention(self, k: int):
        """Training attention over chunks: prefix rows causal among themselves, each chunk of pixel tokens
        against the prefix and the window before it (never the T x T scores)."""
        p, c, w, masks = self.config.cond_tokens, self.chunk, self.config.window, self._table(k)["chunks"]
        assert w is not None  # forward() attends by chunks only with a window

        def attend(q, key, value):
            b, h, t, d = q.shape
            n = t - p
            out = [F.scaled_dot_product_attention(q[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True)]
            kv = []
            for z in (key, value):
                local = F.pad(z[:, :, p:], (0, 0, w, 0)).unfold(2, w + c, c).transpose(-1, -2)  # (b,h,n/c,w+c,d)
                kv.append(torch.cat([z[:, :, None, :p].expand(b, h, n // c, p, d), local], 3))
            y = F.scaled_dot_product_attention(q[:, :, p:].reshape(b, h, n // c, c, d), kv[0], kv[1], attn_mask=masks)
            return torch.cat(out + [y.reshape(b, h, n, d)], 2)

        return attend

    def _prefix(self, cond: torch.Tensor) -> torch.Tensor:
        return self.cond(cond.float()).view(len(cond), self.config.cond_tokens, -1) + self.cond_pos

    # -------------------------------------------------------------- training
    def forward(self, cond: torch.Tensor, tokens: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Teacher forcing: (B, COND_DIM), (B, n) palette tokens (raster pixel order) -> (B, n, VOCAB) logits
        in sequence order, every position predicted from earlier blocks only."""
        n, p = self.config.side**2, self.config.cond_tokens
        x = torch.cat([self._prefix(cond), self._embed(tokens, torch.arange(n, device=tokens.device), k)], 1)
        if self.config.window is not None:
            return self.head(self.trunk(x, attend=self._local_attention(k))[:, p:])
        mask = None if k == 1 else self._table(k)["mask"]  # k = 1: the fused causal path
        return self.head(self.trunk(x, mask=mask)[:, p:])

    def dense_forward(self, cond: torch.Tensor, tokens: torch.Tensor, k: int = 1) -> torch.Tensor:
        """forward() with the dense (T, T) mask whatever the window: the reference the chunked path must match."""
        n, p = self.config.side**2, self.config.cond_tokens
        x = torch.cat([self._prefix(cond), self._embed(tokens, torch.arange(n, device=tokens.device), k)], 1)
        return self.head(self.trunk(x, mask=self._table(k)["mask"])[:, p:])

    def loss(self, cond: torch.Tensor, tokens: torch.Tensor, k: int = 1) -> torch.Tensor:
        logits = self(cond, tokens, k)
        target = tokens[:, self.order]  # sequence order
        return F.cross_entropy(logits.float().reshape(-1, VOCAB), target.reshape(-1))

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        k: int = 1,
        generator: torch.Generator | None = None,
        guidance_scale: float = 1.0,
        uncond: torch.Tensor | None = None,
        temperature: float = 1.0,
        use_cache: bool = True,
        counter: EvalCounter | None = None,
    ) -> torch.Tensor:
        """(B, COND_DIM) -> (B, n) palette tokens (raster pixel order), n / k network evaluations (x2 guided).

        use_cache=False re-runs the whole sequence at every step (the same tokens, quadratic cost)."""
        cfg, n, p = self.config, self.config.side**2, self.config.cond_tokens
        b = len(cond)
        guided = float(guidance_scale) != 1.0
        if guided:
            if uncond is None:
                raise ValueError("guidance_scale != 1 needs `uncond` (the empty prompt's condition)")
            cond = torch.cat([cond, uncond.to(cond).expand(b, -1)])
        table = self._table(k)
        prefix = self._prefix(cond)
        pixels = torch.full((len(cond), n), UNKNOWN, dtype=torch.long, device=cond.device)
        cache = KVCache() if use_cache else None
        kept = torch.arange(0, device=cond.device)  # sequence positions (prefix first) held in the cache
        for step in range(n // k):
            idx = torch.arange(step * k, (step + 1) * k, device=cond.device)
            if cache is not None:  # use_cache
                x, rows = self._embed(pixels, idx, k), p + idx
                if step == 0:
                    x, rows = torch.cat([prefix, x], 1), torch.arange(p + k, device=cond.device)
                kept = torch.cat([kept, p + idx if step else rows])
                h = self.trunk(x, mask=table["mask"][rows][:, kept], cache=cache)[:, -k:]
                if cfg.window is not None and step + 1 < n // k:  # forget what the next tokens cannot see
                    lo = ((step + 1) * k // self.chunk) * self.chunk - cfg.window
                    stale = int(((kept >= p) & (kept < p + lo)).sum())
                    if stale:
                        cache.drop(p, p + stale)
                        kept = torch.cat([kept[:p], kept[p + stale :]])
            else:
                end = (step + 1) * k
                x = torch.cat([prefix, self._embed(pixels, torch.arange(end, device=cond.device), k)], 1)
                h = self.trunk(x, mask=table["mask"][: p + end, : p + end])[:, -k:]
            if counter is not None:
                counter.add(len(cond))
            logits = self.head(h).float()  # (B', k, VOCAB)
            if guided:
                c, u = logits.chunk(2)
                logits = u + guidance_scale * (c - u)
            values = sample_categorical(logits, generator, temperature)  # (B, k)
            pixels[:, self.order[idx]] = values.repeat(2, 1) if guided else values
        return pixels[:b]


@dataclass
class EvalCounter:
    """Counts network evaluations: rows the network processed (a guided step on B images adds 2B)."""

    rows: int = 0
    calls: int = 0
    log: list = field(default_factory=list)

    def add(self, rows: int) -> None:
        self.rows += int(rows)
        self.calls += 1

    def per_image(self, images: int) -> float:
        return self.rows / images

    def wrap(self, model_fn):
        """A model callable (x, t, cond) -> out that counts its batch rows."""

        def counted(x, t, cond):
            self.add(len(x))
            return model_fn(x, t, cond)

        return counted
