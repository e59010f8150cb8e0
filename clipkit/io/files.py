"""Crash-safe files and folders: temp sibling + fsync + rename, honouring the umask (see clipkit.io)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from clipkit.io.errors import DamagedFileError

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


def process_alive(pid: int) -> bool:
    """True unless process `pid` of this host is known to be gone (a pid we may not signal is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


# ----------------------------------------------------------------------------- temporary siblings

_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def _temp_prefix(path: Path) -> str:
    """`.NAME~PID~HOST~` : a temporary sibling names its writer, so a later writer can tell a stale one."""
    return f".{path.name}~{os.getpid()}~{_HOST}~"


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of PATH (`.NAME~PID~HOST~*.tmp`) left by writers of this host that died.

    A kill -9 between creating a temporary sibling and renaming it leaves it
    behind; the next write of the same output removes it. Siblings of a live
    process, of another host or of another name are never touched.
    """
    path = Path(path)
    removed: list[Path] = []
    head = f".{path.name}~"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        fields = name[len(head) : -len(".tmp")].split("~")
        if len(fields) != 3 or not fields[0].isdigit() or fields[1] != _HOST or process_alive(int(fields[0])):
            continue
        stale = path.parent / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()
        removed.append(stale)
    return removed


def _named(e: OSError, path: Path) -> OSError:
    """`e` with `path` as its filename when it has none (a failed write names no file)."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield the Path of a fresh temporary sibling of `path` to write by name; rename it onto `path` on success.

    For libraries that only take file names (safetensors, FAISS, matplotlib). The
    sibling honours the umask, is fsynced before the rename, and is removed on
    failure; stale siblings of a killed writer are removed first (clean_stale_temps).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would not
        os.close(fd)
    except OSError as e:
        raise _named(e, path) from e
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # a library that re-created the file made it 0600
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        _cleanup_failed(e, Path(tmp), path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary sibling of `path` for writing; rename it onto `path` on success.

    Stale temporary siblings of `path` (a writer killed with -9) are removed first.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would not
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
        _cleanup_failed(e, Path(tmp), path)


def _cleanup_failed(e: BaseException, tmp: Path, path: Path) -> None:
    """Remove the temporary sibling of a failed write and re-raise, naming `path` (ENOSPC when the disk is full)."""
    full = isinstance(e, OSError) and e.errno is None and _device_full(path.parent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    if full:  # numpy & co report a short write without an errno
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
    if isinstance(e, OSError):
        raise _named(e, path) from e
    raise e


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
    """Parse a JSON file; a malformed one raises DamagedFileError (a ValueError) naming the file and the place."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DamagedFileError(
            f"{what} {str(path)!r} is not valid JSON (line {e.lineno}, column {e.colno}: "
            f"{e.msg}); it is damaged or was not written by clipkit"
        ) from None
    except UnicodeDecodeError:
        raise DamagedFileError(f"{what} {str(path)!r} is not UTF-8 text; it is damaged or not a {what}") from None
    except RecursionError:
        raise DamagedFileError(f"{what} {str(path)!r} nests too deeply to be a {what}") from None


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
        if exchange_paths(new, path):  # one atomic step: path is never absent
            _fsync_dir(path.parent)
            _remove(new)  # `new` now names the previous output
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
        clean_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
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
