"""The autoregressive prior of unCLIP (§2.2): text embedding -> CLIP image embedding, one token at a time.

    prior = ArPrior(ArPriorConfig(embed_dim=128, components=32))
    prior.fit_codebook(train_image_embeddings)          # PCA basis + quantile bins: buffers, saved with the weights
    loss = prior.loss(image_emb, text_emb, drop=mask)   # cross-entropy at every component, one causal pass
    z = prior.sample(text_emb, guidance_scale=2.0, generator=g)   # (N, D) unit image embeddings, KV cache
    pipe = UnCLIP(clip, decoder, prior)                 # a drop-in for the diffusion prior (prior_sample dispatches)

The unit image embedding is centred and projected on its leading principal
components (decreasing variance first), and each component is quantised into
`bins` buckets of equal mass on the training projections; the bucket indices
are what a causal transformer predicts, component after component, after a
prefix of `cond_tokens` tokens made from the text embedding. Decoding maps each
bucket to its median training value, back through the basis, and renormalises.
Text dropout to a learned null embedding during training gives the
unconditional branch of classifier-free guidance, applied to the logits.
(unCLIP also prefixed the caption's tokens and a quantised text-image dot
product; here the text embedding alone conditions, and `UnCLIP.prior_sample`
keeps the best of `candidates` samples by that dot product for both priors.)

`CausalTransformer` and `KVCache` are the trunk: pre-norm blocks that take an
explicit attention mask (True = may attend), so block-causal orders work as
well as the plain causal one (the generation lab's pixel model uses them), and
that append their keys and values to a cache, so that sampling runs each token
through the network once instead of re-reading the whole prefix at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.unclip.config import ArPriorConfig

# ----------------------------------------------------------------------------- the trunk


class KVCache:
    """Keys and values of every layer for the tokens processed so far, each (B, heads, T, head_dim)."""

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __len__(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this layer's new keys / values; return all of them (past + new)."""
        if layer == len(self.layers):
            self.layers.append((k, v))
        else:
            pk, pv = self.layers[layer]
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
            self.layers[layer] = (k, v)
        return k, v

    def drop(self, start: int, end: int) -> None:
        """Forget cached positions start..end-1 (ones no later token attends to, e.g. behind a sliding window)."""
        self.layers = [
            (torch.cat([k[:, :, :start], k[:, :, end:]], 2), torch.cat([v[:, :, :start], v[:, :, end:]], 2))
            for k, v in self.layers
        ]


class Block(nn.Module):
    """Pre-norm self-attention + MLP (nanoGPT's block), with an optional mask and cache."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, is_causal: bool, cache: KVCache | None, index: int, attend=None):
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(index, k, v)  # (B, heads, past + t, w/heads)
        if attend is not None:
            y = attend(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, w)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CausalTransformer(nn.Module):
    """A stack of blocks over (B, T, W) token vectors; see the module docstring."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} is not divisible by heads={heads}")
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None, attend=None
    ) -> torch.Tensor:
        """x (B, T, W): the new tokens. mask (T, past + T) bool, True = may attend (every row needs one True);
        None = causal: each new token sees the cached ones and the new ones up to itself.
        cache: read, and extended with the new tokens' keys / values. Returns (B, T, W), normalised.
        attend: a function (q, k, v) -> y, each (B, heads, T, head_dim), replacing the masked dense attention
        (e.g. a chunked local attention that never builds the T x T scores); `mask` is then ignored."""
        past, t = (len(cache) if cache is not None else 0), x.shape[1]
        is_causal = False
        if mask is None:
            if past == 0:
                is_causal = t > 1  # SDPA's fused causal path
            elif t > 1:
                mask = causal_mask(t, past, x.device)
        elif tuple(mask.shape) != (t, past + t):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected ({t}, {past + t}) for {t} new tokens "
                f"after {past} cached ones"
            )
        for i, block in enumerate(self.blocks):
            x = block(x, mask, is_causal, cache, i, attend)
        return self.norm(x)


def causal_mask(t: int, past: int = 0, device=None) -> torch.Tensor:
    """(t, past + t) bool: new token i sees the `past` cached tokens and new tokens 0..i."""
    return torch.ones(t, past + t, dtype=torch.bool, device=device).tril(past)


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None, temperature: float = 1.0):
    """One draw per row of (..., V) logits by inverting the CDF at a uniform from `generator` (the same
    uniforms pick the same classes from the same probabilities, whatever computed them)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    u = torch.rand(probs.shape[:-1], generator=generator).to(probs.device)
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1)).squeeze(-1).clamp_max(probs.shape[-1] - 1)


# ----------------------------------------------------------------------------- the prior


class ArPrior(nn.Module):
    """Text embedding -> quantised PCA components of the image embedding, causally (module docstring)."""

    KIND = "ar_prior"  # its folder and config "kind" in an UnCLIP pipeline folder

    pca_mean: torch.Tensor  # buffers: the codebook
    pca_basis: torch.Tensor
    bin_edges: torch.Tensor
    bin_values: torch.Tensor
    explained_variance: torch.Tensor

    def __init__(self, config: ArPriorConfig):
        super().__init__()
        self.config = cfg = config
        d, p, w = cfg.embed_dim, cfg.components, cfg.width
        self.cond = nn.Linear(d, cfg.cond_tokens * w)
        self.null_text = nn.Parameter(F.normalize(torch.randn(d), dim=0))
        self.token = nn.Embedding(cfg.bins, w)
        self.pos = nn.Parameter(torch.randn(cfg.cond_tokens + p - 1, w) * 0.02)
        self.trunk = CausalTransformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.head = nn.Linear(w, cfg.bins)
        # The codebook (fit_codebook): saved in model.safetensors beside the weights.
        self.register_buffer("pca_mean", torch.zeros(d))
        self.register_buffer("pca_basis", torch.eye(d)[:p].clone())  # (P, D) rows: components
        self.register_buffer("bin_edges", torch.zeros(p, cfg.bins - 1))  # interior edges, increasing
        self.register_buffer("bin_values", torch.zeros(p, cfg.bins))  # each bucket's median
        self.register_buffer("explained_variance", torch.zeros(p))  # fraction per component

    # -------------------------------------------------------------- the codebook
    @torch.no_grad()
    def fit_codebook(self, image_embeddings: torch.Tensor) -> dict:
        """PCA of the unit (N, D) training embeddings and equal-mass buckets per component; returns
        {"explained_variance": fraction kept, "reconstruction_cosine": mean cosine after quantisation}."""
        cfg = self.config
        e = F.normalize(torch.as_tensor(image_embeddings).double(), dim=-1)
        if e.ndim != 2 or e.shape[1] != cfg.embed_dim or len(e) < 2:
            raise ValueError(f"image_embeddings have shape {tuple(e.shape)}; expected (N >= 2, {cfg.embed_dim})")
        if cfg.components > min(e.shape):
            raise ValueError(
                f"components={cfg.components} but {len(e)} embeddings span at most {min(e.shape)} "
                f"directions; use fewer components or more data"
            )
        mean = e.mean(0)
        _, s, vh = torch.linalg.svd(e - mean, full_matrices=False)
        basis = vh[: cfg.components]
        basis = basis * basis.gather(1, basis.abs().argmax(1, keepdim=True)).sign()  # deterministic signs
        proj = ((e - mean) @ basis.T).float()  # (N, P)
        inner = torch.arange(1, cfg.bins, dtype=torch.float32) / cfg.bins
        middle = (torch.arange(cfg.bins, dtype=torch.float32) + 0.5) / cfg.bins
        self.pca_mean.copy_(mean.float())
        self.pca_basis.copy_(basis.float())
        self.bin_edges.copy_(torch.quantile(proj, inner, dim=0).T)
        self.bin_values.copy_(torch.quantile(proj, middle, dim=0).T)
        self.explained_variance.copy_((s[: cfg.components] ** 2 / (s**2).sum()).float())
        back = self.dequantize(self.quantize(e.float()))
        return {
            "explained_variance": float(self.explained_variance.sum()),
            "reconstruction_cosine": float((back * e.float()).sum(-1).mean()),
        }

    def quantize(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings -> (N, P) long bucket indices."""
        proj = (F.normalize(image_embeddings.float(), dim=-1) - self.pca_mean) @ self.pca_basis.T  # (N, P)
        return torch.searchsorted(self.bin_edges.contiguous(), proj.T.contiguous()).T

    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, P) bucket indices -> (N, D) unit embeddings."""
        proj = self.bin_values.gather(1, tokens.T).T  # (N, P)
        return F.normalize(self.pca_mean + proj @ self.pca_basis, dim=-1)

    # -------------------------------------------------------------- the network
    def null_embedding(self, batch: int) -> torch.Tensor:
        return self.null_text[None].expand(batch, -1)

    def _prefix(self, text: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        text = F.normalize(text.float(), dim=-1).to(self.null_text.dtype)
        if drop is not None:
            text = torch.where(drop[:, None], self.null_text[None], text)
        c = self.config
        return self.cond(text * c.embed_dim**0.5).view(len(text), c.cond_tokens, c.width)

    def forward(self, tokens: torch.Tensor, text_embed: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: (B, P) bucket indices, (B, D) text embeddings -> (B, P, bins) logits, all at once."""
        c = self.config
        if tokens.ndim != 2 or tokens.shape[1] != c.components:
            raise ValueError(f"tokens have shape {tuple(tokens.shape)}; expected (B, {c.components})")
        x = torch.cat([self._prefix(text_embed, drop), self.token(tokens[:, :-1])], 1) + self.pos
        return self.head(self.trunk(x)[:, c.cond_tokens - 1 :])  # position i predicts component i

    def loss(self, image_embed: torch.Tensor, text_embed: torch.Tensor, drop: torch.Tensor | None = None):
        tokens = self.quantize(image_embed)
        logits = self(tokens, text_embed, drop)
        return F.cross_entropy(logits.float().reshape(-1, self.config.bins), tokens.reshape(-1))

    def sample_embeddings(
        self,
        text_embed: torch.Tensor,
        guidance_scale: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The prior protocol (DiffusionPrior has the same): (N, D) text -> (N, D) unit image embeddings.
        One network evaluation per PCA component, so `steps` does not apply."""
        return self.sample(text_embed, guidance_scale, generator=generator)

    @torch.no_grad()
    def sample(
        self,
        text_embed: torch.Tensor,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        use_cache: bool = True,
        return_tokens: bool = False,
    ):
        """(N, D) text embeddings -> (N, D) unit image embeddings: P network evaluations (2P with guidance,
        one batch). use_cache=False recomputes the whole prefix at every step (same tokens, slower)."""
        c = self.config
        n = len(text_embed)
        guided = float(guidance_scale) != 1.0
        text = text_embed.to(self.pos.device)
        drop = torch.zeros(n, dtype=torch.bool, device=text.device)
        if guided:
            text, drop = torch.cat([text, text]), torch.cat([drop, ~drop])
        prefix = self._prefix(text, drop)  # (B', C, W)
        cache = KVCache() if use_cache else None
        tokens = torch.zeros(n, 0, dtype=torch.long, device=text.device)
        for i in range(c.components):
            if use_cache:
                new = (
                    prefix + self.pos[: c.cond_tokens]
                    if i == 0
                    else self.token(tokens[:, -1:]).repeat(2 if guided else 1, 1, 1) + self.pos[c.cond_tokens + i - 1]
                )
                h = self.trunk(new, cache=cache)[:, -1]
            else:
                seq = torch.cat([prefix, self.token(tokens).repeat(2 if guided else 1, 1, 1)], 1)
                h = self.trunk(seq + self.pos[: seq.shape[1]])[:, -1]
            logits = self.head(h).float()
            if guided:
                cond, uncond = logits.chunk(2)
                logits = uncond + guidance_scale * (cond - uncond)
            tokens = torch.cat([tokens, sample_categorical(logits, generator, temperature)[:, None]], 1)
        out = self.dequantize(tokens)
        return (out, tokens) if return_tokens else out
