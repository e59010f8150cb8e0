"""Crash-safe file output: nothing we write is ever left half-written.

Every writer puts its bytes under a temporary name in the destination's own
directory (same filesystem) and renames into place, which POSIX makes atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary sibling of `path` for writing; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write `obj` as JSON atomically."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling directory; on success it replaces `path` whole.

    A crash inside the block leaves `path` as it was. The swap itself is two
    renames (old out of the way, new into place), so at worst a crash between
    them leaves `path` absent and `.{name}.old-*` beside it, never a mixture.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Keys a saved model's config.json may carry beside the dataclass fields.
SAVED_CONFIG_EXTRAS = frozenset({"kind", "clipkit_version"})


def dataclass_from_json(cls, data: dict, what: str):
    """`cls(**data)` for a model config read back from JSON; unknown keys raise, naming them and `what`."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known - SAVED_CONFIG_EXTRAS
    if unknown:
        raise ValueError(f"unknown {what} config keys {sorted(unknown)}; expected some of {sorted(known)}")
    return cls(**{k: v for k, v in data.items() if k in known})
