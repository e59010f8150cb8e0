"""ClipModel: one object for a CLIP dual encoder, its tokenizer and its preprocessing.

    m = clipkit.create("shapes-tiny")                      # fresh, from an architecture preset of ours
    m = clipkit.create("ViT-B-32")                         # fresh, any open_clip architecture
    m = clipkit.create("my-64px.json")                     # fresh, your own architecture (open_clip's format)
    m = clipkit.create({"embed_dim": 128,                  # ... or the same as a dict
                        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4},
                        "text_cfg": {"context_length": 32, "width": 128, "heads": 4, "layers": 4}})
    m = clipkit.load("runs/shapes-clip")                   # a directory we saved
    m = clipkit.load("ViT-B-32", pretrained="laion2b_s34b_b79k")   # open_clip weights by tag
    m = clipkit.load("ViT-B-32", pretrained="/models/vit-b-32.safetensors")  # ... or by local file
    img = m.encode_images(["a.png", pil_image, uint8_array])   # (N, D) float32, unit norm, CPU
    txt = m.encode_texts(["a red circle"])

The towers, tokenizer and transforms are open_clip's. An architecture is an
open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`, optionally
`preprocess_cfg`: the format of open_clip's model_configs/*.json, or of an
`open_clip_config.json` with `model_cfg` inside), checked field by field against
open_clip's own config classes when it is read, and built from the dict directly:
never through open_clip's global registry, so our presets
(clipkit/presets/architectures/) and yours have no side effects at import. The
tokenizer's context length is `text_cfg.context_length`. A saved model is a
directory with `config.json` (the whole model config) + `model.safetensors`, plus
an `open_clip_config.json` so `open_clip.create_model("local-dir:DIR")` loads it too.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipkit import __version__
from clipkit.config import SAVED_METADATA, config_from_dict, is_comment, read_json_object, to_json
from clipkit.hub import resolve_pretrained
from clipkit.images import check_image_size, open_image, to_rgb
from clipkit.io import (
    MANIFEST_NAME,
    NonFiniteError,
    output_format,
    read_json,
    read_manifest,
    staged_output,
    write_json,
    write_manifest,
)
from clipkit.io.errors import positive_int
from clipkit.io.weights import fit_weights, load_weights, save_weights

PRESET_DIR = Path(__file__).parent / "presets" / "architectures"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FORMAT = "clipkit-model"  # manifest.json format of a saved model folder
CUSTOM_NAME = "custom"  # the name of a model built from a config dict
MODEL_TYPES = (
    "an architecture preset or open_clip architecture name (str), an open_clip-style model config "
    "(dict: embed_dim, vision_cfg, text_cfg) or the path of its .json file"
)


def _open_clip():
    import open_clip  # lazy: ~1-3 s of imports, paid only by what builds a model, not by `import clipkit.model`

    return open_clip


@dataclass(frozen=True)
class ClipConfig:
    """Everything needed to rebuild the module; saved as config.json next to the weights.

    Checked when built: `model_cfg` against open_clip's config classes (check_model_cfg)."""

    name: str  # preset, open_clip architecture or config file name
    model_cfg: dict  # open_clip model config (embed_dim, vision_cfg, text_cfg, ...)
    preprocess_cfg: dict = field(default_factory=dict)  # size, mean, std, interpolation, resize_mode
    pretrained: str | None = None  # where the weights came from (tag or file), informative

    def __post_init__(self):
        check_model_cfg(self.model_cfg)
        _read_tower(_open_clip().transform.PreprocessCfg, self.preprocess_cfg, "preprocess_cfg")

    def to_json(self) -> dict:
        return {"clipkit_version": __version__, **to_json(self)}


def list_presets() -> list[str]:
    """Names of clipkit's own architecture presets (clipkit/presets/architectures/*.json)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def check_model_cfg(model_cfg: Mapping) -> None:
    """Refuse, in one line naming the field and the fix, an open_clip model config that open_clip would
    fail on deep inside a constructor (or misread): a missing embed_dim / vision_cfg / text_cfg, unknown
    keys, wrong types (through open_clip's own CLIPVisionCfg / CLIPTextCfg / MultimodalCfg, read by
    clipkit.config), and a ViT whose image_size is not a multiple of its patch_size or whose widths do
    not split into heads."""
    open_clip = _open_clip()
    if not isinstance(model_cfg, Mapping):
        raise TypeError(f"model_cfg = {model_cfg!r:.60}; expected an object with embed_dim, vision_cfg, text_cfg")
    examples = {
        "embed_dim": '"embed_dim": 512 (the width of the shared embedding)',
        "vision_cfg": '"vision_cfg": {"image_size": 64, "patch_size": 8, "width": 256, "layers": 6}',
        "text_cfg": '"text_cfg": {"context_length": 32, "width": 256, "heads": 4, "layers": 6}',
    }
    for key, example in examples.items():
        if key not in model_cfg:
            raise ValueError(f"{key!r} is missing; add {example}")
    embed_dim = model_cfg["embed_dim"]
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise TypeError(f"embed_dim = {embed_dim!r}; expected a positive integer (the width of the shared embedding)")
    cls = _module_class(model_cfg)
    valid = (set(inspect.signature(cls.__init__).parameters) - {"self", "cast_dtype", "output_dict"}) | {"custom_text"}
    unknown = sorted(k for k in model_cfg if k not in valid and not is_comment(k))
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(valid)}")
    vision = _read_tower(open_clip.model.CLIPVisionCfg, model_cfg["vision_cfg"], "vision_cfg")
    text = _read_tower(open_clip.model.CLIPTextCfg, model_cfg["text_cfg"], "text_cfg")
    if "multimodal_cfg" in model_cfg:
        _read_tower(open_clip.coca_model.MultimodalCfg, model_cfg["multimodal_cfg"], "multimodal_cfg")
    if not vision.timm_model_name and isinstance(vision.layers, int):  # open_clip's ViT
        sides = (vision.image_size,) * 2 if isinstance(vision.image_size, int) else vision.image_size
        if vision.patch_size < 1:
            raise ValueError(
                f"vision_cfg.patch_size={vision.patch_size}; expected a positive number of pixels (e.g. 8)"
            )
        if any(s % vision.patch_size for s in sides):
            raise ValueError(
                f"vision_cfg.image_size={vision.image_size} is not a multiple of vision_cfg.patch_size="
                f"{vision.patch_size}; choose an image_size that the patch size divides (e.g. "
                f"{-(-sides[0] // vision.patch_size) * vision.patch_size}) or another patch_size"
            )
        if vision.head_width < 1 or vision.width % vision.head_width:
            raise ValueError(
                f"vision_cfg.width={vision.width} is not a multiple of vision_cfg.head_width="
                f"{vision.head_width}; heads are width / head_width (e.g. width 256, head_width 64)"
            )
    if not text.hf_model_name and (text.heads < 1 or text.width % text.heads):
        raise ValueError(
            f"text_cfg.width={text.width} is not divisible by text_cfg.heads={text.heads}; "
            f"choose heads that divides the width (e.g. width 256, heads 4)"
        )


def _read_tower(cls, cfg, what: str):
    """One of open_clip's config classes (a tower, preprocessing) through the strict reader. open_clip's own
    configs write null for "not used here" whatever the annotation (RN50's patch_size): null reads as the default."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{what} = {cfg!r:.60}; expected an object of {cls.__name__} fields")
    return config_from_dict(cls, {k: v for k, v in cfg.items() if v is not None}, what)


def _module_class(model_cfg: Mapping):
    """The open_clip class a config asks for, chosen as open_clip.create_model does."""
    open_clip = _open_clip()
    text_cfg = model_cfg.get("text_cfg")
    custom_text = model_cfg.get("custom_text", False) or (isinstance(text_cfg, Mapping) and "hf_model_name" in text_cfg)
    if "multimodal_cfg" in model_cfg:
        return open_clip.CoCa
    return open_clip.CustomTextCLIP if custom_text else open_clip.CLIP


def model_config(model: str | os.PathLike | Mapping) -> ClipConfig:
    """The architecture a user named, checked: a preset of ours (list_presets()), an open_clip architecture
    (open_clip.list_models()), an open_clip-style model config as a dict, or the path of its .json file."""
    if isinstance(model, Mapping):
        return _config_from_data(model, CUSTOM_NAME, "the model config")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model={model!r:.60} ({type(model).__name__}); expected {MODEL_TYPES}")
    text = os.fspath(model)
    if Path(text).suffix == ".json":
        data = read_json_object(text, "model config file")
        return _config_from_data(data, Path(text).stem, f"model config file {text!r}")
    preset = PRESET_DIR / f"{text}.json"
    if preset.is_file():
        return _config_from_data(read_json_object(preset, "architecture preset"), text, f"preset {text!r}")
    model_cfg = _open_clip().get_model_config(text)  # a deep copy: the registry stays as it is
    if model_cfg is None:
        raise ValueError(
            f"unknown model {text!r}: expected a clipkit preset {list_presets()}, "
            f"an open_clip architecture (see open_clip.list_models(), e.g. 'ViT-B-32', 'RN50'), "
            f"an open_clip-style model config file (my-model.json: embed_dim, vision_cfg, text_cfg) "
            f"or a directory saved by ClipModel.save"
        )
    return _config_from_data(model_cfg, text, f"open_clip architecture {text!r}")


def _config_from_data(data: Mapping, name: str, where: str) -> ClipConfig:
    """A ClipConfig from open_clip's model_configs/*.json format (the model config, optionally with its
    preprocess_cfg) or open_clip_config.json's ({"model_cfg": ..., "preprocess_cfg": ...})."""
    data = {k: v for k, v in data.items() if not is_comment(k)}
    if "model_cfg" in data:
        unknown = sorted(set(data) - {"model_cfg", "preprocess_cfg"})
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown} beside model_cfg; expected model_cfg and optionally preprocess_cfg"
            )
        model_cfg, preprocess_cfg = data["model_cfg"], data.get("preprocess_cfg", {})
    else:
        model_cfg = data
        preprocess_cfg = model_cfg.pop("preprocess_cfg", {})
    try:
        if not isinstance(model_cfg, Mapping) or not isinstance(preprocess_cfg, Mapping):
            raise TypeError("model_cfg and preprocess_cfg must be JSON objects")
        model_cfg = {k: _without_comments(v) for k, v in model_cfg.items() if not is_comment(k)}
        preprocess_cfg = dict(preprocess_cfg)
        vision = model_cfg.get("vision_cfg")
        if "size" not in preprocess_cfg and isinstance(vision, Mapping):
            preprocess_cfg["size"] = vision.get("image_size", 224)
        return ClipConfig(name=name, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from e


def _without_comments(value):
    return {k: v for k, v in value.items() if not is_comment(k)} if isinstance(value, Mapping) else value


def _build_module(model_cfg: dict) -> torch.nn.Module:
    """Instantiate the open_clip class a config asks for (what open_clip.create_model does, minus weights)."""
    cfg = copy.deepcopy(model_cfg)
    cls = _module_class(cfg)
    cfg.pop("custom_text", None)
    if "output_dict" in inspect.signature(cls.__init__).parameters:  # CoCa has none
        cfg["output_dict"] = True
    return cls(**cfg)


def _build_tokenizer(config: ClipConfig):
    """open_clip's tokenizer for one of its architectures (HF, SigLIP), else its SimpleTokenizer; either
    way at the context length of text_cfg."""
    open_clip = _open_clip()
    context_length = config.model_cfg.get("text_cfg", {}).get("context_length", 77)
    if open_clip.get_model_config(config.name) is not None:
        return open_clip.get_tokenizer(config.name, context_length=context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class ImagePreprocess:
    """open_clip's eval transform, with a shortcut for images already at the model's size.

    For an RGB image of exactly the target size, resize and centre-crop are
    identities, so we go straight to tensor + normalise: same numbers, ~3.5x
    faster per image here, which matters when decoding feeds a small model.
    """

    def __init__(self, preprocess_cfg: dict, image_size):
        open_clip = _open_clip()
        mean, std = open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD

        cfg = dict(preprocess_cfg)
        self.size = cfg.get("size", image_size)
        self.transform = open_clip.image_transform(
            self.size,
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            interpolation=cfg.get("interpolation"),
            resize_mode=cfg.get("resize_mode"),
        )
        self.target = tuple(self.size) if isinstance(self.size, (list, tuple)) else (self.size, self.size)
        self.mean = torch.tensor(cfg.get("mean") or mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(cfg.get("std") or std, dtype=torch.float32).view(3, 1, 1) * 255

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if isinstance(image, Image.Image) and image.mode == "RGB" and image.size[::-1] == self.target:
            pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
            return (pixels - self.mean) / self.std
        return self.transform(image)

    def __repr__(self) -> str:
        return f"ImagePreprocess(size={self.size}, transform={self.transform})"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class ClipModel:
    """A CLIP dual encoder with its tokenizer and image preprocessing.

    `model` is the open_clip torch module (train it, wrap it, prepare it with
    Accelerate); the encode_* methods are the inference API.
    """

    def __init__(self, module: torch.nn.Module, config: ClipConfig, device: str | torch.device = "auto"):
        self.model = module
        self.config = config
        self._identity: str | None = None
        self.tokenizer = _build_tokenizer(config)
        size = config.preprocess_cfg.get("size") or config.model_cfg["vision_cfg"].get("image_size", 224)
        self.preprocess = ImagePreprocess(config.preprocess_cfg, size)
        self.image_size = size if isinstance(size, int) else tuple(size)
        self.to(device)

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        return int(self.config.model_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.config.model_cfg.get("text_cfg", {}).get("context_length", 77))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def identity(self) -> str:
        """'name:sha256-prefix' of the weights, hashed once (at load, or on first use) and again at `save`.

        Indexes and unCLIP pipelines record it to refuse a mismatched model. Training
        changes the weights: `save` (or `refresh_identity`) brings it up to date.
        """
        return self.refresh_identity() if self._identity is None else self._identity

    def refresh_identity(self) -> str:
        self._identity = f"{self.config.name}:{weights_fingerprint(self.model.state_dict())}"
        return self._identity

    def to(self, device: str | torch.device) -> ClipModel:
        self.model.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"ClipModel(name={self.config.name!r}, embed_dim={self.embed_dim}, params={n / 1e6:.2f}M, "
            f"device={self.device})"
        )

    # ------------------------------------------------------------------ encoding
    def encode_images(
        self, images, batch_size: int = 256, progress: bool = False, precision: str = "fp32"
    ) -> torch.Tensor:
        """Embed images: a ready (N, 3, H, W) tensor batch, or a sequence of paths, PIL images or uint8 HWC arrays.

        Returns an (N, D) float32, L2-normalised CPU tensor. Decoding of the next
        batch overlaps with the forward pass of the current one. precision="bf16" runs
        the forward under bf16 autocast (CPU matrix units / GPU tensor cores); the output stays float32.
        """
        batch_size = _check_batch_size(batch_size)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"a tensor batch must be (N, 3, H, W) preprocessed pixels; got shape {tuple(images.shape)}"
                )
            if images.is_floating_point() and not bool(torch.isfinite(images).all()):
                bad = int((~torch.isfinite(images.flatten(1))).any(1).nonzero()[0, 0])
                raise NonFiniteError(
                    f"the tensor batch holds NaN or inf pixels (the first in image {bad}); "
                    f"embeddings of it would be NaN. Check how the batch was made"
                )
            batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
            return self._encode(
                batches, self.model.encode_image, len(images), batch_size, progress, "images", precision
            )
        items = _as_list(images, "images")
        if not items:
            return torch.zeros(0, self.embed_dim)

        def load(index: int) -> torch.Tensor:
            return self.preprocess(load_image(items[index], index))

        def chunks():
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                starts = range(0, len(items), batch_size)
                pending = None
                for start in starts:
                    future = [pool.submit(load, i) for i in range(start, min(start + batch_size, len(items)))]
                    if pending is not None:
                        yield torch.stack([f.result() for f in pending])
                    pending = future
                if pending is not None:
                    yield torch.stack([f.result() for f in pending])

        return self._encode(chunks(), self.model.encode_image, len(items), batch_size, progress, "images", precision)

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool = False, precision: str = "fp32"
    ) -> torch.Tensor:
        """Embed texts (over-long ones are truncated to the context length). (N, D) float32, unit norm, CPU.
        precision: "fp32" or "bf16" (autocast), as for encode_images."""
        batch_size = _check_batch_size(batch_size)
        items = _as_list(texts, "texts")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__} ({t!r:.60}); expected str")
        if not items:
            return torch.zeros(0, self.embed_dim)
        chunks = (self.tokenizer(items[i : i + batch_size]) for i in range(0, len(items), batch_size))
        return self._encode(chunks, self.model.encode_text, len(items), batch_size, progress, "texts", precision)

    def _encode(
        self,
        chunks: Iterable[torch.Tensor],
        encoder,
        total: int,
        batch_size: int,
        progress: bool,
        unit: str,
        precision: str = "fp32",
    ):
        from tqdm.auto import tqdm

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}; expected 'fp32' or 'bf16'")
        out = []
        was_training = self.model.training
        self.model.eval()
        device = self.device
        try:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"),
                tqdm(total=total, disable=not progress, unit=unit, desc=f"encode {unit}") as bar,
            ):
                for chunk in chunks:
                    features = encoder(chunk.to(device, non_blocking=True))
                    out.append(F.normalize(features.float(), dim=-1).cpu())
                    bar.update(len(chunk))
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> Path:
        """Write config.json + model.safetensors (+ open_clip_config.json, manifest.json), complete or not at all.

        A previous model at `directory` is replaced once the new one is complete; anything
        else there is refused (clipkit.io.check_output_path) unless `overwrite`, and so is a
        `directory` that is, is inside or contains one of `inputs` (e.g. the models it was made from).
        """
        directory = Path(directory)
        with staged_output(directory, MODEL_FORMAT, inputs=inputs, overwrite=overwrite) as stage:
            tmp = stage.dir
            save_weights(
                self.model.state_dict(), tmp / WEIGHTS_NAME, metadata={"format": "pt", "clipkit_name": self.config.name}
            )
            write_json(tmp / CONFIG_NAME, {**self.config.to_json(), "identity": self.refresh_identity()})
            write_json(
                tmp / "open_clip_config.json",
                {"model_cfg": self.config.model_cfg, "preprocess_cfg": self.config.preprocess_cfg},
            )
            write_manifest(
                tmp,
                MODEL_FORMAT,
                {WEIGHTS_NAME: None, CONFIG_NAME: None, "open_clip_config.json": None},
                model=self.identity,
            )
        return directory


def weights_fingerprint(state_dict: dict) -> str:
    """Short sha256 over parameter names, shapes and bytes (order independent of dict order)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _check_batch_size(batch_size) -> int:
    return positive_int(batch_size, "batch_size")


def _as_list(items, what: str) -> list:
    if isinstance(items, (str, bytes, os.PathLike, Image.Image)) or (isinstance(items, np.ndarray) and items.ndim <= 3):
        raise TypeError(f"{what} must be a sequence of items (wrap a single one in a list); got {type(items).__name__}")
    if isinstance(items, np.ndarray):
        return list(items)
    try:
        return list(items)
    except TypeError:
        raise TypeError(f"{what} must be a sequence; got {type(items).__name__}") from None


def load_image(item: Any, index: int = 0) -> Image.Image:
    """One image item (path, PIL image, uint8 HWC / HW array) as an RGB PIL image; errors name the item."""
    if isinstance(item, (str, os.PathLike)):
        return open_image(item, what=f"images[{index}] ({str(item)!r})")
    if isinstance(item, Image.Image):
        check_image_size(item, f"images[{index}]", max_pixels=None)
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"images[{index}]: array of dtype {item.dtype} and shape {item.shape}; "
                f"expected uint8 HxW, HxWx1, HxWx3 or HxWx4"
            )
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        if item.shape[0] < 1 or item.shape[1] < 1:
            raise ValueError(f"images[{index}]: array of shape {item.shape} has no pixels")
        return to_rgb(Image.fromarray(item))
    raise TypeError(
        f"images[{index}] is {type(item).__name__}; expected a path, PIL.Image, uint8 numpy array "
        f"or pass a preprocessed (N, 3, H, W) tensor"
    )


# ---------------------------------------------------------------------- constructors


def create(
    model: str | os.PathLike | Mapping, device: str | torch.device = "cpu", seed: int | None = None
) -> ClipModel:
    """A freshly initialised model: a clipkit preset (see list_presets()), an open_clip architecture, or your
    own architecture as an open_clip-style model config (a dict, or the path of its .json file):

        clipkit.create({"embed_dim": 128, "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128,
                        "layers": 4}, "text_cfg": {"context_length": 32, "width": 128, "heads": 4, "layers": 4}})
    """
    config = model_config(model)
    if seed is not None:
        torch.manual_seed(seed)
    return ClipModel(_build_module(config.model_cfg), config, device)


def load(
    path_or_name: str | os.PathLike | Mapping,
    pretrained: str | None = None,
    device: str | torch.device = "auto",
    cache_dir: str | None = None,
    verify: bool = True,
) -> ClipModel:
    """Load a saved directory, or an architecture (as `create` takes it) with pretrained weights.

    `pretrained` is an open_clip tag (downloaded when online; offline it fails
    within seconds unless the weights are cached) or a local checkpoint file
    (.safetensors, or .pt/.bin read with weights_only=True). A saved directory is
    verified against its manifest (sha256 of every file, ~0.1 s per 100 MB; `verify=False`
    checks sizes only); damaged, pickled or mismatched weights raise one-line ValueErrors.
    """
    if isinstance(path_or_name, bool) or not isinstance(path_or_name, (str, os.PathLike, Mapping)):
        raise TypeError(
            f"clipkit.load({path_or_name!r}): got {type(path_or_name).__name__}; expected a saved model "
            f"directory (str or path), or an architecture name or model config with pretrained=TAG|FILE"
        )
    if isinstance(path_or_name, (str, os.PathLike)):
        path = Path(path_or_name)
        if path.is_dir():
            if pretrained is not None:
                raise ValueError(f"pretrained={pretrained!r} makes no sense with a saved directory {str(path)!r}")
            return _load_directory(path, device, verify)
        if path.suffix in (".safetensors", ".pt", ".bin", ".pth") or (
            os.sep in str(path_or_name) and path.suffix != ".json"
        ):
            raise FileNotFoundError(
                f"{str(path_or_name)!r} is not a directory saved by clipkit; to load a checkpoint file, "
                f"name its architecture: clipkit.load('ViT-B-32', pretrained='/path/to/file.safetensors')"
            )
    if pretrained is None:
        shown = repr(str(path_or_name)) if isinstance(path_or_name, (str, os.PathLike)) else "a model config"
        raise ValueError(
            f"clipkit.load({shown}) needs a saved model directory or pretrained=TAG|FILE; "
            f"for a freshly initialised {shown} use clipkit.create({shown})"
        )
    config = model_config(path_or_name)
    module = _build_module(config.model_cfg)
    if pretrained is not None:
        checkpoint, tag_cfg = resolve_pretrained(config.name, pretrained, cache_dir=cache_dir)
        _open_clip().load_checkpoint(module, checkpoint, weights_only=True)
        preprocess = dict(config.preprocess_cfg)
        preprocess.update({k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg})
        config = ClipConfig(config.name, config.model_cfg, preprocess, pretrained=str(pretrained))
    return ClipModel(module, config, device)


def _load_directory(path: Path, device, verify: bool = True) -> ClipModel:
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a clipkit model directory: {f.name} is missing")
    fix = "save the model again (ClipModel.save), or load the folder it was copied from"
    if output_format(path) is not None or (path / MANIFEST_NAME).exists():
        # every part's size and sha256 (~1 GB/s; verify=False: sizes only); folders saved before
        # manifests existed are read unverified, and damage there still fails in load_weights
        read_manifest(path, MODEL_FORMAT, fix=fix, what="model", verify=verify)
    config = config_from_dict(ClipConfig, read_json(config_file, "model config"), "model config", ignore=SAVED_METADATA)
    module = _build_module(config.model_cfg)
    fit_weights(module, load_weights(weights_file, fix=fix), weights_file, fix=fix)
    return ClipModel(module, config, device)


def resolve_model(
    source: str | os.PathLike | Mapping,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> ClipModel:
    """The one way to turn what a user typed into a model: a saved directory is loaded, an architecture
    with `pretrained` gets those weights, a bare architecture (preset, open_clip name, model config file
    or dict) is created fresh with `seed` (so that repeated commands on an untrained preset agree)."""
    is_dir = isinstance(source, (str, os.PathLike)) and Path(source).is_dir()
    if is_dir or pretrained is not None:
        return load(source, pretrained=pretrained, device=device)
    return create(source, device="cpu" if str(device) == "auto" else device, seed=seed)
