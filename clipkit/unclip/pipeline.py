"""`UnCLIP`: text -> prior -> image embedding -> decoder -> pixels, plus decode / variations / interpolation.

    pipe = clipkit.UnCLIP.load("runs/unclip")            # refuses a CLIP other than the one it was trained on
    images = pipe.generate("a red circle wearing a hat", num_images=4, steps=50, sampler="ddim",
                           prior_guidance=2.0, decoder_guidance=3.0, negative_prompt=None, seed=0)
    images = pipe.decode(image_embeddings)               # (N, D) CLIP image embeddings -> N PIL images
    images = pipe.variations("circle.png", n=4)
    images = pipe.interpolate("circle.png", "a blue star", n=8)   # slerp, same starting noise
    images = pipe.render_expression('img:"circle.png" + 1.0*text:"hat"', num_images=4)

A saved pipeline is one folder:
    unclip.json                 the CLIP reference (path + identity) and format version
    decoder/config.json, decoder/model.safetensors     (EMA weights: the ones used for sampling)
    prior/config.json,   prior/model.safetensors

Samplers: "ddim" and "ddpm" run the decoder on its own discrete schedule; "flow"
runs Euler steps of the same model in rectified-flow coordinates
x_s = (1 - s) x0 + s eps, mapping each s onto the schedule's matching noise level
(equal signal-to-noise ratio) so one trained decoder serves all three.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipkit.diffusion import DDIMSampler, DDPMSampler, FlowMatchSampler, NoiseSchedule, sample
from clipkit.io import atomic_directory, write_json
from clipkit.unclip.decoder import DecoderConfig, DecoderUNet
from clipkit.unclip.prior import DiffusionPrior, PriorConfig

SAMPLERS = ("ddim", "ddpm", "flow")
MANIFEST = "unclip.json"
FORMAT = "clipkit-unclip"


# ----------------------------------------------------------------------------- model folders

def save_model(module: torch.nn.Module, config, directory: str | os.PathLike, kind: str) -> Path:
    """config.json + model.safetensors, written atomically."""
    from safetensors.torch import save_file

    from clipkit import __version__

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": kind})
        write_json(tmp / "config.json", {"kind": kind, "clipkit_version": __version__, **config.to_json()})
    return directory


def load_model(directory: str | os.PathLike, kind: str):
    """Rebuild a DecoderUNet ("decoder") or DiffusionPrior ("prior") from its folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not a saved unCLIP {kind}: {name} is missing")
    data = json.loads((directory / "config.json").read_text())
    if data.get("kind", kind) != kind:
        raise ValueError(f"{str(directory)!r} holds a {data.get('kind')!r}, expected a {kind!r}")
    if kind == "decoder":
        module = DecoderUNet(DecoderConfig.from_json(data))
    elif kind == "prior":
        module = DiffusionPrior(PriorConfig.from_json(data))
    else:
        raise ValueError(f"kind={kind!r}; expected 'decoder' or 'prior'")
    module.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return module.eval()


# ----------------------------------------------------------------------------- samplers

def make_sampler(name: str, schedule: NoiseSchedule, prediction: str, clip_x0=1.0):
    if name == "ddim":
        return DDIMSampler(schedule, eta=0.0, prediction_type=prediction, clip_x0=clip_x0)
    if name == "ddpm":
        return DDPMSampler(schedule, prediction_type=prediction, clip_x0=clip_x0)
    if name == "flow":
        return FlowMatchSampler(clip_x0=clip_x0)
    raise ValueError(f"sampler={name!r} is not one of {SAMPLERS}")


class FlowAdapter:
    """Run a discrete-schedule model as a flow-matching velocity model.

    At flow noise level s, x_s = (1-s) x0 + s eps has the signal-to-noise ratio of
    the schedule's abar = (1-s)^2 / ((1-s)^2 + s^2); the schedule's x_t is x_s
    rescaled by 1 / sqrt((1-s)^2 + s^2), at the fractional timestep whose abar
    matches (interpolated). The model's x0 estimate gives the velocity (x_s - x0) / s.
    """

    def __init__(self, model_fn, schedule: NoiseSchedule, prediction: str):
        self.model_fn, self.prediction = model_fn, prediction
        abar = schedule.alphas_cumprod.double()
        self.abar_increasing = abar.flip(0)                  # for searchsorted
        self.n = len(abar)

    def _timestep(self, abar: torch.Tensor) -> torch.Tensor:
        a = self.abar_increasing.to(abar.device)
        i = torch.searchsorted(a, abar.double()).clamp(1, self.n - 1)
        lo, hi = a[i - 1], a[i]
        frac = ((abar.double() - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        pos = (i - 1).double() + frac                        # position in the flipped table
        return (self.n - 1 - pos).float()                    # fractional timestep

    def __call__(self, x, s, cond):
        s = s.to(x.device, torch.float64).clamp(1e-4, 1.0)
        r = torch.sqrt((1 - s) ** 2 + s ** 2)
        abar = ((1 - s) / r) ** 2
        t = self._timestep(abar)
        view = (-1,) + (1,) * (x.ndim - 1)
        xt = x / r.view(view).float()
        out = self.model_fn(xt, t, cond)
        a, sig = abar.sqrt().view(view).float(), (1 - abar).sqrt().view(view).float()
        if self.prediction == "sample":
            x0 = out
        elif self.prediction == "epsilon":
            x0 = (xt - sig * out) / a.clamp_min(1e-4)
        else:
            x0 = a * xt - sig * out
        return (x - x0) / s.view(view).float()


# ----------------------------------------------------------------------------- images

def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> N RGB PIL images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


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

class UnCLIP:
    """A frozen CLIP, a diffusion prior and a diffusion decoder (see the module docstring)."""

    def __init__(self, clip, decoder: DecoderUNet, prior: DiffusionPrior | None = None,
                 clip_path: str | None = None):
        if prior is not None and prior.config.embed_dim != decoder.config.embed_dim:
            raise ValueError(f"prior embed_dim {prior.config.embed_dim} != decoder embed_dim {decoder.config.embed_dim}")
        if decoder.config.embed_dim != clip.embed_dim:
            raise ValueError(f"decoder embed_dim {decoder.config.embed_dim} != CLIP embed_dim {clip.embed_dim}")
        self.clip, self.decoder, self.prior = clip, decoder.eval(), None if prior is None else prior.eval()
        self.clip_path = clip_path
        dc = decoder.config
        self.decoder_schedule = NoiseSchedule(dc.schedule, num_train_timesteps=dc.num_train_timesteps)
        if prior is not None:
            pc = prior.config
            self.prior_schedule = NoiseSchedule(pc.schedule, num_train_timesteps=pc.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def to(self, device) -> "UnCLIP":
        self.decoder.to(device)
        if self.prior is not None:
            self.prior.to(device)
        self.clip.to(device)
        return self

    # -------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self.decoder, self.decoder.config, directory / "decoder", "decoder")
        if self.prior is not None:
            save_model(self.prior, self.prior.config, directory / "prior", "prior")
        write_manifest(directory, self.clip, self.clip_path)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, clip=None, device: str | torch.device = "cpu") -> "UnCLIP":
        """Load a pipeline folder. `clip`: a ClipModel or a path to use instead of the recorded one
        (it must be the same weights: the identity recorded at training is checked)."""
        import clipkit

        directory = Path(directory)
        manifest_file = directory / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not an unCLIP pipeline folder: {MANIFEST} is missing")
        manifest = json.loads(manifest_file.read_text())
        ref = manifest["clip"]
        clip_path = None
        if clip is None or isinstance(clip, (str, os.PathLike)):
            candidates = [Path(clip)] if clip is not None else [directory / ref.get("relative_path", ""),
                                                                Path(ref["path"])]
            found = next((p for p in candidates if p.is_dir() and (p / "config.json").is_file()), None)
            if found is None:
                raise FileNotFoundError(f"the pipeline's CLIP model is not at {[str(p) for p in candidates]}; "
                                        f"pass clip=<ClipModel or directory> (identity {ref['identity']})")
            clip_path = str(found.resolve())
            clip = clipkit.load(found, device=device)
        check_clip(clip, ref["identity"], directory)
        decoder = load_model(directory / "decoder", "decoder")
        prior = load_model(directory / "prior", "prior") if (directory / "prior" / "config.json").is_file() else None
        return cls(clip, decoder, prior, clip_path=clip_path or ref.get("path")).to(device)

    # -------------------------------------------------------------- prior
    @torch.no_grad()
    def prior_sample(self, text_embeddings: torch.Tensor, guidance_scale: float = 2.0, steps: int = 32,
                     candidates: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, D) text embeddings -> (N, D) unit image embeddings. Draws `candidates` per text and keeps
        the one with the highest dot product with the text embedding (unCLIP §2.2)."""
        if self.prior is None:
            raise ValueError("this pipeline has no prior (train one with `clipkit train-prior`)")
        text = F.normalize(text_embeddings.float().to(self.device), dim=-1)
        n, d = text.shape
        rep = text.repeat_interleave(candidates, 0)
        scale = self.prior.config.scale
        sampler = make_sampler("ddim", self.prior_schedule, self.prior.config.prediction,
                               clip_x0=lambda z: F.normalize(z, dim=-1) * scale)
        z = sample(self.prior, (n * candidates, d), sampler, steps, cond=rep,
                   uncond=self.prior.null_embedding(1), guidance_scale=guidance_scale, generator=generator,
                   device=self.device)
        z = self.prior.from_prior_space(z).view(n, candidates, d)
        best = (z * text[:, None]).sum(-1).argmax(1)                       # (N,)
        return z[torch.arange(n), best]

    # -------------------------------------------------------------- decoder
    @torch.no_grad()
    def decode(self, image_embeddings: torch.Tensor, steps: int = 50, sampler: str = "ddim",
               guidance_scale: float = 3.0, negative_embeddings: torch.Tensor | None = None,
               seed: int | None = 0, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, return_trajectory: bool = False, output: str = "pil"):
        """(N, D) CLIP image embeddings -> N images (PIL, or a (N, 3, H, W) tensor in [-1, 1] with output="tensor").

        `negative_embeddings` replace the null condition of guidance (push away from them)."""
        if output not in ("pil", "tensor"):
            raise ValueError(f"output={output!r}; expected 'pil' or 'tensor'")
        emb = torch.as_tensor(image_embeddings).float().to(self.device)
        if emb.ndim != 2 or emb.shape[1] != self.decoder.config.embed_dim:
            raise ValueError(f"image_embeddings have shape {tuple(emb.shape)}; expected (N, {self.decoder.config.embed_dim})")
        emb = F.normalize(emb, dim=-1)
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        cfg = self.decoder.config
        shape = (emb.shape[0], cfg.in_channels, cfg.image_size, cfg.image_size)
        uncond = self.decoder.null_embedding(1) if negative_embeddings is None else \
            F.normalize(torch.as_tensor(negative_embeddings).float().to(self.device), dim=-1)
        model_fn = self.decoder
        if sampler == "flow":
            model_fn = FlowAdapter(self.decoder, self.decoder_schedule, cfg.prediction)
        s = make_sampler(sampler, self.decoder_schedule, cfg.prediction)
        result = sample(model_fn, shape, s, steps, cond=emb, uncond=uncond, guidance_scale=guidance_scale,
                        generator=generator, noise=noise, return_trajectory=return_trajectory, device=self.device)
        x, traj = result if return_trajectory else (result, None)
        images = to_pil(x) if output == "pil" else x.clamp(-1, 1)
        return (images, traj) if return_trajectory else images

    # -------------------------------------------------------------- user-facing generation
    def generate(self, prompt: str | Sequence[str], num_images: int = 4, steps: int = 50, sampler: str = "ddim",
                 prior_guidance: float = 2.0, decoder_guidance: float = 3.0, negative_prompt: str | None = None,
                 seed: int = 0, prior_steps: int = 32, guidance_scale: float | None = None,
                 return_trajectory: bool = False, output: str = "pil"):
        """Text -> images: num_images per prompt. A negative prompt goes through the prior and its image
        embedding replaces the decoder's null branch (Kandinsky's recipe). `guidance_scale` is an alias
        of `decoder_guidance`."""
        if guidance_scale is not None:
            decoder_guidance = guidance_scale
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or num_images < 1:
            raise ValueError(f"need at least one prompt and num_images >= 1; got {len(prompts)} and {num_images}")
        g = torch.Generator().manual_seed(int(seed))
        text = self.clip.encode_texts(prompts).repeat_interleave(num_images, 0)
        emb = self.prior_sample(text, prior_guidance, prior_steps, generator=g)
        negative = None
        if negative_prompt:
            neg_text = self.clip.encode_texts([negative_prompt]).expand(len(emb), -1)
            negative = self.prior_sample(neg_text, prior_guidance, prior_steps, generator=g)
        return self.decode(emb, steps, sampler, decoder_guidance, negative, generator=g,
                           return_trajectory=return_trajectory, output=output)

    def embed(self, item, seed: int = 0, prior_guidance: float = 2.0) -> torch.Tensor:
        """(D,) image embedding of an image (path / PIL / array), a text (through the prior) or a vector."""
        if isinstance(item, torch.Tensor) or isinstance(item, np.ndarray):
            v = torch.as_tensor(item).float().flatten()
            if v.numel() != self.clip.embed_dim:
                raise ValueError(f"an embedding must have {self.clip.embed_dim} values; got {v.numel()}")
            return F.normalize(v, dim=0)
        if isinstance(item, str) and not Path(item).is_file():
            g = torch.Generator().manual_seed(int(seed))
            return self.prior_sample(self.clip.encode_texts([item]), prior_guidance, generator=g)[0].cpu()
        return self.clip.encode_images([item])[0]

    def variations(self, image, n: int = 4, **decode_kwargs) -> list[Image.Image]:
        """n images decoded from one image's CLIP embedding (different starting noise)."""
        emb = self.embed(image)
        return self.decode(emb[None].expand(n, -1), **decode_kwargs)

    def interpolate(self, a, b, n: int = 8, seed: int = 0, **decode_kwargs) -> list[Image.Image]:
        """Slerp between the embeddings of a and b (images, paths, texts or vectors), n steps, one starting noise."""
        if n < 2:
            raise ValueError(f"n={n}; an interpolation needs at least 2 images")
        ea, eb = self.embed(a, seed), self.embed(b, seed)
        emb = slerp(ea, eb, torch.linspace(0, 1, n))
        cfg = self.decoder.config
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((1, cfg.in_channels, cfg.image_size, cfg.image_size), generator=g).expand(n, -1, -1, -1)
        return self.decode(emb, noise=noise.contiguous(), seed=seed, **decode_kwargs)

    def render_expression(self, expression: str, num_images: int = 4, seed: int = 0, add_vector=None,
                          **decode_kwargs):
        """Decode the vector an embedding expression evaluates to (clipkit.evaluate_expression syntax),
        plus `add_vector` (a (D,) array or a .npy path, e.g. the mean hat vector of retrieval/hat_vector.py)."""
        from clipkit import evaluate_expression

        vector = np.asarray(evaluate_expression(self.clip, expression), dtype=np.float32)
        if add_vector is not None:
            extra = np.load(add_vector) if isinstance(add_vector, (str, os.PathLike)) else np.asarray(add_vector)
            if extra.shape != vector.shape:
                raise ValueError(f"add_vector has shape {extra.shape}; expected {vector.shape}")
            vector = vector + extra.astype(np.float32)
        v = self.embed(torch.as_tensor(vector))
        return self.decode(v[None].expand(num_images, -1), seed=seed, **decode_kwargs)


# ----------------------------------------------------------------------------- the CLIP reference

def write_manifest(directory: Path, clip, clip_path: str | None) -> None:
    ref = {"identity": clip.identity, "name": clip.config.name}
    if clip_path:
        ref["path"] = str(Path(clip_path).resolve())
        ref["relative_path"] = os.path.relpath(Path(clip_path).resolve(), Path(directory).resolve())
    write_json(Path(directory) / MANIFEST, {"format": FORMAT, "version": 1, "clip": ref})


def check_clip(clip, identity: str, where) -> None:
    if clip.identity != identity:
        raise ValueError(f"CLIP model {clip.identity!r} does not match the one {str(where)!r} was trained "
                         f"with ({identity!r}); embeddings of another CLIP mean nothing to its prior and decoder")


def trajectory_strip(trajectory, columns: int = 10, field: str = "x0") -> Image.Image:
    """One row per sample: `columns` evenly spaced denoising steps (x0 estimates or states) as a PNG-ready grid."""
    from clipkit.images import make_grid

    frames = getattr(trajectory, field)                                # (S, N, 3, H, W)
    picks = np.unique(np.linspace(0, len(frames) - 1, columns).round().astype(int))
    images = []
    for i in range(frames.shape[1]):
        images.extend(to_pil(frames[picks, i]))
    return make_grid(images, columns=len(picks), scale=2)
