"""Pretrained open_clip weights: resolve a tag or file to a local checkpoint, fast offline.

open_clip downloads through huggingface_hub or plain URLs and, without a
network, retries for about a minute before failing. We look in the local
caches first, then probe the host with a short TCP connect, and fail within
seconds with a message that says how to use a local file instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def _host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hf_file(repo_id: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    for filename in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """Return (local checkpoint path, the tag's config: mean/std/...) for an open_clip tag or a file."""
    import open_clip

    if os.path.isfile(pretrained):
        return pretrained, {}
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        looks_like_path = os.sep in pretrained or Path(pretrained).suffix in (".safetensors", ".pt", ".bin", ".pth")
        if looks_like_path:
            raise FileNotFoundError(f"pretrained checkpoint file not found: {pretrained!r}")
        raise ValueError(
            f"pretrained={pretrained!r} is not a known tag for {model_name!r} "
            f"(known: {open_clip.list_pretrained_tags_by_model(model_name)}) nor an existing file"
        )

    repo_id = (tag_cfg.get("hf_hub") or "").strip("/")
    url = tag_cfg.get("url") or ""
    if repo_id:
        cached = _cached_hf_file(repo_id, cache_dir)
        if cached:
            return cached, tag_cfg
    elif url:
        downloaded = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if downloaded.is_file():
            return str(downloaded), tag_cfg

    host = "huggingface.co" if repo_id else (urlparse(url).hostname or "")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or not host or not _host_reachable(host):
        source = f"https://huggingface.co/{repo_id}" if repo_id else url
        raise ConnectionError(
            f"cannot download pretrained weights {model_name!r}/{pretrained!r}: {host or 'the source'} is not "
            f"reachable (offline?) and they are not in the local cache. Download them on a connected machine "
            f"from {source} and pass the file: clipkit.load({model_name!r}, pretrained='/path/to/"
            f"open_clip_model.safetensors'), or copy the Hugging Face cache here (HF_HOME)."
        )
    path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    if not path:
        raise RuntimeError(f"open_clip could not download {model_name!r}/{pretrained!r}")
    return path, tag_cfg
