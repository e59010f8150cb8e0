"""Crash-safe files and folders: temp sibling + fsync + rename, honouring the umask (see clipkit.io)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


# ----------------------------------------------------------------------------- small primitives

def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _named(e: OSError, path: Path) -> OSError:
    """`e` with `path` as its filename when it has none (a failed write names no file)."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary sibling of `path` for writing; rename it onto `path` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())          # mkstemp makes 0600; a plain open() would not
    except OSError as e:
        raise _named(e, path) from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        full = isinstance(e, OSError) and e.errno is None and _device_full(path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:        # numpy & co report a short write without an errno
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise


def _device_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write `obj` as JSON atomically."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """Parse a JSON file; a malformed one raises ValueError naming the file, the place and what it is."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         f"it is damaged or was not written by clipkit") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text; it is damaged or not a {what}") from None


_RENAME_EXCHANGE = 2


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _swap_into_place(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; whatever was at `path` is removed only once `new` is in place."""
    _fsync_dir(new)
    if os.path.lexists(path):
        if exchange_paths(new, path):                 # one atomic step: path is never absent
            _fsync_dir(path.parent)
            _remove(new)                              # `new` now names the previous output
            return
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(new, path)
        _fsync_dir(path.parent)
        _remove(old)
    else:
        os.replace(new, path)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling directory; on success it replaces `path` whole.

    A crash inside the block leaves `path` as it was; the swap is one atomic
    exchange on Linux (elsewhere two renames, so a crash between them can leave
    `path` absent with `.{name}.old-*` beside it, never a mixture).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as e:
        raise _named(e, path) from e
    try:
        yield tmp
        _swap_into_place(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise


# ----------------------------------------------------------------------------- configs read back

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
