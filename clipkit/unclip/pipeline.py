"""`UnCLIP`: text -> prior -> image embedding -> decoder -> pixels, plus decode / variations / interpolation.

    pipe = clipkit.UnCLIP.load("runs/unclip")            # refuses a CLIP other than the one it was trained on
    g = torch.Generator().manual_seed(0)                  # the one RNG argument (seed=0 builds the same)
    images = pipe.generate("a red circle wearing a hat", num_images=4, steps=50, sampler="ddim",
                           prior_guidance=2.0, decoder_guidance=3.0, negative_prompt=None, generator=g)
    images = pipe.decode(image_embeddings)               # (N, D) CLIP image embeddings -> N PIL images
    images = pipe.variations("circle.png", n=4)           # an image (path or PIL): a missing path raises
    images = pipe.interpolate(image=("circle.png", "star.png"), n=8)      # slerp, same starting noise
    images = pipe.interpolate(text=("a red circle", "a blue star"), n=8)  # texts go through the prior
    images = pipe.interpolate(embeddings=(pipe.embed(image="circle.png"), pipe.embed(text="a blue star")))
    images = pipe.render_expression('img:"circle.png" + 1.0*text:"hat"', num_images=4)
    prior_only = UnCLIP(clip, decoder=None, prior=prior)  # prior_sample / embed(text=) without a decoder
    big = pipe.generate("a red circle", num_images=4, upsample=True)   # the cascade: + the upsampler (64 px)
    big = pipe.upsample(small_images_tensor, steps=7)    # (N, 3, 32, 32) in [-1, 1] -> 64 px images

A saved pipeline is one folder:
    unclip.json                 the CLIP reference (path + identity) and format version
    decoder/config.json, decoder/model.safetensors     (EMA weights: the ones used for sampling)
    prior/config.json,   prior/model.safetensors       (either may be missing, not both)
    upsampler/config.json, upsampler/model.safetensors (optional: the super-resolution stage)
    ar_prior/config.json, ar_prior/model.safetensors   (optional: unCLIP's autoregressive prior, PCA basis and
                                                        bins inside; UnCLIP.load(dir, prior="ar") uses it)

Samplers: "ddim" and "ddpm" run the decoder on its own discrete schedule; "flow"
runs Euler steps of the same model through clipkit.diffusion.FlowAdapter (each
flow noise level mapped onto the schedule's level of equal signal-to-noise ratio),
so one trained decoder serves all three.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipkit import evaluate_expression
from clipkit.diffusion import FlowAdapter, sample
from clipkit.model import ClipModel
from clipkit.model import load as load_clip_model
from clipkit.unclip.ar_prior import ArPrior
from clipkit.unclip.decoder import DecoderUNet, noise_low_res
from clipkit.unclip.images import pil_to_tensor, to_pil, trajectory_strip  # noqa: F401 (public here too)
from clipkit.unclip.prior import DiffusionPrior
from clipkit.unclip.samplers import make_sampler, noise_schedule, pixel_clip
from clipkit.unclip.storage import (  # noqa: F401
    MANIFEST,
    check_clip,
    claim_pipeline,
    load_model,
    read_pipeline_manifest,
    save_model,
    write_manifest,
)

PRIORS = ("diffusion", "ar")  # prior/ (DiffusionPrior) or ar_prior/ (ArPrior, unCLIP's autoregressive prior)


# ----------------------------------------------------------------------------- embeddings


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit vectors a, b (D,) at weights w (n,) -> (n, D), unit norm."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    if omega < 1e-4:
        out = a[None] * (1 - w[:, None]) + b[None] * w[:, None]
    else:
        out = (torch.sin((1 - w) * omega)[:, None] * a + torch.sin(w * omega)[:, None] * b) / torch.sin(omega)
    return F.normalize(out, dim=-1)


# ----------------------------------------------------------------------------- pipeline

# What decode / upsample / generate return: a list of PIL images (output="pil") or an (N, 3, H, W) tensor in
# [-1, 1] (output="tensor"); with return_trajectory, (that, Trajectory). Any: the flags choose.
Images = Any
# An image as embed / variations take it: a path, a PIL image or a uint8 HWC array.
ImageInput = str | os.PathLike | Image.Image | np.ndarray


class UnCLIP:
    """A frozen CLIP, a diffusion prior, a diffusion decoder and an upsampler (see the module docstring);
    any of them may be None, not all."""

    def __init__(
        self,
        clip: ClipModel,
        decoder: DecoderUNet | None = None,
        prior: DiffusionPrior | ArPrior | None = None,
        clip_path: str | None = None,
        upsampler: DecoderUNet | None = None,
    ):
        if decoder is None and prior is None and upsampler is None:
            raise ValueError("UnCLIP needs a decoder, a prior or an upsampler; got neither of them")
        for name, model in (("decoder", decoder), ("prior", prior)):
            if model is not None and model.config.embed_dim != clip.embed_dim:
                raise ValueError(f"{name} embed_dim {model.config.embed_dim} != CLIP embed_dim {clip.embed_dim}")
        if upsampler is not None and not upsampler.config.low_res_size:
            raise ValueError("upsampler= must be a DecoderUNet with low_res_size > 0 (a super-resolution stage)")
        if upsampler is not None and upsampler.config.embed_dim not in (0, clip.embed_dim):
            raise ValueError(
                f"upsampler embed_dim {upsampler.config.embed_dim}; expected 0 or the CLIP's {clip.embed_dim}"
            )
        self.clip, self.clip_path = clip, clip_path
        self.decoder = None if decoder is None else decoder.eval()
        self.prior = None if prior is None else prior.eval()
        self.upsampler = None if upsampler is None else upsampler.eval()
        self.decoder_schedule, self.upsampler_schedule = (
            None if m is None else noise_schedule(m.config) for m in (decoder, upsampler)
        )
        self.prior_schedule = getattr(prior, "schedule", None)  # a diffusion prior's; an AR prior has none

    @property
    def device(self) -> torch.device:
        model = next(m for m in (self.decoder, self.prior, self.upsampler) if m is not None)
        return next(model.parameters()).device

    def to(self, device: str | torch.device) -> UnCLIP:
        for model in (self.decoder, self.prior, self.upsampler, self.clip):
            if model is not None:
                model.to(device)
        return self

    def _need(self, name: str):
        model = getattr(self, name)
        if model is None:
            raise ValueError(
                f"this pipeline has no {name} (train one with `clipkit train-{name}`, "
                f"or build UnCLIP(clip, decoder=..., prior=...))"
            )
        return model

    # -------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write each model into its sub-folder (complete or absent, with a manifest) and unclip.json.
        DIRECTORY must be new, empty or a pipeline of the same CLIP; anything else needs `overwrite`."""
        directory = claim_pipeline(directory, self.clip, overwrite=overwrite)
        for name in ("decoder", "prior", "upsampler"):
            model = getattr(self, name)
            if model is not None:
                kind = getattr(model, "KIND", name)  # an ArPrior goes to ar_prior/
                save_model(model, model.config, directory / kind, kind, overwrite=overwrite)
        write_manifest(directory, self.clip, self.clip_path)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        clip: ClipModel | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        prior: str | None = None,
        verify: bool = True,
    ) -> UnCLIP:
        """Load a pipeline folder. `clip`: a ClipModel or a path to use instead of the recorded one
        (it must be the same weights: the identity recorded at training is checked). `prior`: "diffusion"
        (prior/) or "ar" (ar_prior/); None takes prior/ when present, else ar_prior/. Every model is
        verified against its manifest (sha256; `verify=False`: sizes only)."""
        if prior not in (None, *PRIORS):
            raise ValueError(f"prior={prior!r}; expected one of {PRIORS} or None")
        directory = Path(directory)
        ref = read_pipeline_manifest(directory)
        clip_path = None
        if clip is None or isinstance(clip, (str, os.PathLike)):
            recorded = [directory / ref.get("relative_path", ""), Path(ref.get("path", ""))]
            candidates = [Path(clip)] if clip is not None else [p for p in recorded if p != Path("")]
            found = next((p for p in candidates if p.is_dir() and (p / "config.json").is_file()), None)
            if found is None:
                raise FileNotFoundError(
                    f"the pipeline's CLIP model is not at {[str(p) for p in candidates]}; "
                    f"pass clip=<ClipModel or directory> (identity {ref['identity']})"
                )
            clip_path = str(found.resolve())
            clip = load_clip_model(found, device=device, verify=verify)
        check_clip(clip, ref["identity"], directory)
        models = {
            name: load_model(directory / name, name, verify)
            for name in ("decoder", "prior", "upsampler", "ar_prior")
            if (directory / name / "config.json").is_file() and (name != "ar_prior" or prior != "diffusion")
        }
        ar = models.pop("ar_prior", None)
        if prior == "ar" or (prior is None and "prior" not in models and ar is not None):
            if ar is None:
                raise FileNotFoundError(
                    f"{str(directory)!r} holds no ar_prior/ (train one with `clipkit train-ar-prior`)"
                )
            models["prior"] = ar
        elif prior == "diffusion" and "prior" not in models:
            raise FileNotFoundError(f"{str(directory)!r} holds no prior/ (train one with `clipkit train-prior`)")
        if not models:
            raise FileNotFoundError(f"{str(directory)!r} holds no decoder/, prior/ or upsampler/")
        return cls(clip, **models, clip_path=clip_path or ref.get("path")).to(device)

    # -------------------------------------------------------------- prior
    @torch.no_grad()
    def prior_sample(
        self,
        text_embeddings: torch.Tensor,
        guidance_scale: float = 2.0,
        steps: int = 32,
        candidates: int = 2,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """(N, D) text embeddings -> (N, D) unit image embeddings. Draws `candidates` per text and keeps
        the one with the highest dot product with the text embedding (unCLIP §2.2)."""
        prior = self._need("prior")
        generator = make_generator(generator, seed)
        text = F.normalize(text_embeddings.float().to(self.device), dim=-1)
        n, d = text.shape
        rep = text.repeat_interleave(candidates, 0)
        z = prior.sample_embeddings(rep, guidance_scale=guidance_scale, steps=steps, generator=generator)
        z = z.view(n, candidates, d)
        best = (z * text[:, None]).sum(-1).argmax(1)  # (N,)
        return z[torch.arange(n), best]

    # -------------------------------------------------------------- decoder
    @torch.no_grad()
    def decode(
        self,
        image_embeddings: torch.Tensor,
        steps: int = 50,
        sampler: str = "ddim",
        guidance_scale: float = 3.0,
        negative_embeddings: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        noise: torch.Tensor | None = None,
        return_trajectory: bool = False,
        output: str = "pil",
        precision: str = "fp32",
        dynamic_threshold: float | bool | None = None,
        upsample: bool = False,
        upsample_steps: int = 7,
        aug_level: float | None = None,
    ) -> Images:
        """(N, D) CLIP image embeddings -> N images (PIL, or a (N, 3, H, W) tensor in [-1, 1] with output="tensor").

        `negative_embeddings` replace the null condition of guidance (push away from them);
        precision="bf16" runs the decoder under bf16 autocast. `dynamic_threshold`: a percentile for
        Imagen's dynamic thresholding of x0, False for the static clip, None for the decoder's default.
        upsample=True adds the cascade's super-resolution stage (`upsample`, `upsample_steps` steps);
        the trajectory, if asked for, is the base decoder's."""
        decoder = self._need("decoder")
        if output not in ("pil", "tensor"):
            raise ValueError(f"output={output!r}; expected 'pil' or 'tensor'")
        cfg = decoder.config
        emb = torch.as_tensor(image_embeddings).float().to(self.device)
        if emb.ndim != 2 or emb.shape[1] != cfg.embed_dim:
            raise ValueError(f"image_embeddings have shape {tuple(emb.shape)}; expected (N, {cfg.embed_dim})")
        emb = F.normalize(emb, dim=-1)
        generator = make_generator(generator, seed)
        shape = (emb.shape[0], cfg.in_channels, cfg.image_size, cfg.image_size)
        uncond = (
            decoder.null_embedding(1)
            if negative_embeddings is None
            else F.normalize(torch.as_tensor(negative_embeddings).float().to(self.device), dim=-1)
        )
        if upsample:
            self._need("upsampler")
        schedule = self.decoder_schedule
        assert schedule is not None  # set with the decoder
        s = make_sampler(sampler, schedule, cfg.prediction, clip_x0=pixel_clip(cfg, dynamic_threshold))
        model_fn = FlowAdapter(decoder, schedule, cfg.prediction) if sampler == "flow" else decoder
        result = sample(
            model_fn,
            shape,
            s,
            steps,
            cond=emb,
            uncond=uncond,
            guidance_scale=guidance_scale,
            generator=generator,
            noise=noise,
            return_trajectory=return_trajectory,
            device=self.device,
            precision=precision,
        )
        x, traj = result if return_trajectory else (result, None)
        if upsample:
            x = self.upsample(
                x.clamp(-1, 1),
                steps=upsample_steps,
                aug_level=aug_level,
                generator=generator,
                output="tensor",
                precision=precision,
            )
        images = to_pil(x) if output == "pil" else x.clamp(-1, 1)
        return (images, traj) if return_trajectory else images

    @torch.no_grad()
    def upsample(
        self,
        images: torch.Tensor | Sequence[Image.Image],
        steps: int = 7,
        aug_level: float | None = None,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        output: str = "pil",
        precision: str = "fp32",
    ) -> Images:
        """Low-resolution images ((N, 3, h, w) tensor in [-1, 1] or PIL list, h = the upsampler's
        low_res_size) -> N images at its image_size: the cascade's second stage. The low-resolution
        input gets noise of level `aug_level` (default: the upsampler's) as in training (noise-
        conditioning augmentation); sampling starts from pure noise ("trailing" timesteps) and takes
        `steps` steps (Karlo uses 7)."""
        up = self._need("upsampler")
        cfg = up.config
        if output not in ("pil", "tensor"):
            raise ValueError(f"output={output!r}; expected 'pil' or 'tensor'")
        low = images if isinstance(images, torch.Tensor) else pil_to_tensor(images)
        if low.ndim != 4 or low.shape[1] != cfg.in_channels or tuple(low.shape[-2:]) != (cfg.low_res_size,) * 2:
            raise ValueError(
                f"images have shape {tuple(low.shape)}; the upsampler takes (N, {cfg.in_channels}, "
                f"{cfg.low_res_size}, {cfg.low_res_size}) in [-1, 1]"
            )
        level = cfg.aug_level if aug_level is None else float(aug_level)
        generator = make_generator(generator, seed)
        low = noise_low_res(low.float().to(self.device), level, generator)
        n = low.shape[0]
        cond = {"low_res": low, "aug_level": torch.full((n,), level, device=self.device)}
        schedule = self.upsampler_schedule
        assert schedule is not None  # set with the upsampler
        s = make_sampler(sampler, schedule, cfg.prediction, clip_x0=pixel_clip(cfg), timestep_spacing="trailing")
        x = sample(
            lambda x, t, c: up(x, t, low_res=c["low_res"], aug_level=c["aug_level"]),
            (n, cfg.in_channels, cfg.image_size, cfg.image_size),
            s,
            steps,
            cond=cond,
            generator=generator,
            device=self.device,
            precision=precision,
        )
        return to_pil(x) if output == "pil" else x.clamp(-1, 1)

    # -------------------------------------------------------------- user-facing generation
    def generate(
        self,
        prompt: str | Sequence[str],
        num_images: int = 4,
        steps: int = 50,
        sampler: str = "ddim",
        prior_guidance: float = 2.0,
        decoder_guidance: float = 3.0,
        negative_prompt: str | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prior_steps: int = 32,
        guidance_scale: float | None = None,
        return_trajectory: bool = False,
        output: str = "pil",
        precision: str = "fp32",
        upsample: bool = False,
        **decode_kwargs,
    ) -> Images:
        """Text -> images: num_images per prompt. A negative prompt goes through the prior and its image
        embedding replaces the decoder's null branch (Kandinsky's recipe). `guidance_scale` is an alias
        of `decoder_guidance`; upsample=True adds the super-resolution stage; other keywords go to decode."""
        if guidance_scale is not None:
            decoder_guidance = guidance_scale
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or num_images < 1:
            raise ValueError(f"need at least one prompt and num_images >= 1; got {len(prompts)} and {num_images}")
        self._need("decoder")
        g = make_generator(generator, seed)
        text = self.clip.encode_texts(prompts).repeat_interleave(num_images, 0)
        emb = self.prior_sample(text, prior_guidance, prior_steps, generator=g)
        negative = None
        if negative_prompt:
            neg_text = self.clip.encode_texts([negative_prompt]).expand(len(emb), -1)
            negative = self.prior_sample(neg_text, prior_guidance, prior_steps, generator=g)
        return self.decode(
            emb,
            steps,
            sampler,
            decoder_guidance,
            negative,
            generator=g,
            return_trajectory=return_trajectory,
            output=output,
            precision=precision,
            upsample=upsample,
            **decode_kwargs,
        )

    def embed(
        self,
        image: ImageInput | None = None,
        *,
        text: str | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prior_guidance: float = 2.0,
    ) -> torch.Tensor:
        """(D,) CLIP image embedding of an `image` (path, PIL image or uint8 array) or of a `text` (through
        the prior). Exactly one of them; a path that does not exist raises FileNotFoundError."""
        if (image is None) == (text is None):
            raise TypeError("embed() takes exactly one of image= (a path, PIL image or array) or text= (a prompt)")
        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"text must be a str prompt, got {type(text).__name__}")
            g = make_generator(generator, seed)
            return self.prior_sample(self.clip.encode_texts([text]), prior_guidance, generator=g)[0].cpu()
        if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
            raise FileNotFoundError(f"no such image file: {str(image)!r} (to embed a prompt, pass text=...)")
        return self.clip.encode_images([image])[0]

    def variations(self, image: ImageInput, n: int = 4, **decode_kwargs) -> Images:
        """n images decoded from one image's CLIP embedding (different starting noise); `image` as in embed."""
        emb = self.embed(image=image)
        return self.decode(emb[None].expand(n, -1), **decode_kwargs)

    def interpolate(
        self,
        *positional,
        image: Sequence | None = None,
        text: Sequence[str] | None = None,
        embeddings: Sequence | None = None,
        n: int = 8,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prior_guidance: float = 2.0,
        **decode_kwargs,
    ) -> Images:
        """Slerp in n steps, all decoded from one starting noise, between two images (`image=(a, b)`), two
        texts through the prior (`text=(a, b)`) or two (D,) embeddings (`embeddings=(a, b)`, e.g. from embed)."""
        given = {k: v for k, v in (("image", image), ("text", text), ("embeddings", embeddings)) if v is not None}
        if positional or len(given) != 1 or len(next(iter(given.values()))) != 2:
            raise TypeError(
                f"interpolate() takes one pair by keyword: image=(a, b), text=(a, b) or "
                f"embeddings=(a, b); got {[*map(repr, positional), *sorted(given)] or 'none'}"
            )
        if n < 2:
            raise ValueError(f"n={n}; an interpolation needs at least 2 images")
        cfg = self._need("decoder").config
        g = make_generator(generator, seed)
        if embeddings is not None:
            ends = [unit_vector(e, self.clip.embed_dim) for e in embeddings]
        elif text is not None:
            ends = [self.embed(text=t, generator=g, prior_guidance=prior_guidance) for t in text]
        else:
            assert image is not None  # exactly one of the three was given (checked above)
            ends = [self.embed(image=i) for i in image]
        emb = slerp(ends[0], ends[1], torch.linspace(0, 1, n))
        noise = torch.randn((1, cfg.in_channels, cfg.image_size, cfg.image_size), generator=g).expand(n, -1, -1, -1)
        return self.decode(emb, noise=noise.contiguous(), generator=g, **decode_kwargs)

    def render_expression(
        self,
        expression: str,
        num_images: int = 4,
        add_vector: np.ndarray | torch.Tensor | str | os.PathLike | None = None,
        **decode_kwargs,
    ) -> Images:
        """Decode the vector an embedding expression evaluates to (clipkit.evaluate_expression syntax),
        plus `add_vector` (a (D,) array or a .npy path, e.g. the mean hat vector of retrieval/hat_vector.py)."""

        vector = np.asarray(evaluate_expression(self.clip, expression), dtype=np.float32)
        if add_vector is not None:
            extra = np.load(add_vector) if isinstance(add_vector, (str, os.PathLike)) else np.asarray(add_vector)
            if extra.shape != vector.shape:
                raise ValueError(f"add_vector has shape {extra.shape}; expected {vector.shape}")
            vector = vector + extra.astype(np.float32)
        v = unit_vector(vector, self.clip.embed_dim)
        return self.decode(v[None].expand(num_images, -1), **decode_kwargs)


def make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    """The RNG of a call: `generator` as given, or one seeded with `seed` (a convenience); None: torch's global RNG."""
    if generator is not None and seed is not None:
        raise ValueError(f"pass generator= or seed=, not both (got seed={seed!r})")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}; for a seed pass seed=")
    return torch.Generator().manual_seed(int(seed)) if seed is not None else generator


def unit_vector(v, dim: int) -> torch.Tensor:
    """A (D,) tensor or array as a unit float32 tensor; D must be the CLIP width."""
    v = (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v, dtype=np.float32))).float().flatten()
    if v.numel() != dim:
        raise ValueError(f"an embedding must have {dim} values; got {v.numel()}")
    return F.normalize(v.cpu(), dim=0)
