"""clipkit: CLIP embedding spaces end to end.

Train a contrastive dual encoder on webdataset shards, embed images and texts,
retrieve with FAISS (nearest neighbours, zero-shot, embedding arithmetic) and
generate pixels back from embeddings with an unCLIP prior + decoder.

The public names below are imported lazily so that `import clipkit` and the
`clipkit --help` command stay fast (torch and open_clip load on first use).
"""

from importlib import import_module
from typing import Any

__version__ = "0.3.0"  # the one version source (pyproject.toml reads it); CHANGELOG.md says what changed

# public name -> module that defines it
_EXPORTS = {
    "ClipModel": "clipkit.model",
    "create": "clipkit.model",
    "load": "clipkit.model",
    "EmbeddingIndex": "clipkit.retrieval.index.core",
    "ZeroShotClassifier": "clipkit.retrieval.zeroshot",
    "evaluate_expression": "clipkit.retrieval.arithmetic",
    "nearest_words": "clipkit.retrieval.arithmetic",
    "UnCLIP": "clipkit.unclip",
    "evaluate_datasets": "clipkit.evaluation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
