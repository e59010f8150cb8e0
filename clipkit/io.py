"""Crash-safe output: nothing we write is ever half-written, mixed, lost, or someone else's.

Single files and small folders (a model, a config):

    with atomic_file("x.bin") as f: f.write(...)      # temp sibling + fsync + rename
    write_json("x.json", obj)
    with atomic_directory("model_dir") as tmp: ...     # a temp sibling folder swapped in whole

Multi-file outputs (embedding folders, indexes; training runs and unCLIP
pipelines adopt the same calls) follow one completeness contract:

    with staged_output("OUT", "clipkit-index", inputs=["EMB"], overwrite=False) as stage:
        ...write the parts into stage.dir...
        write_manifest(stage.dir, "clipkit-index", {"index.faiss": None, "ids.npy": n}, model=..., count=n)
    manifest = read_manifest("OUT", "clipkit-index", fix="rebuild it with `clipkit index build`")

- `staged_output` refuses an output path that is, or is inside, or contains one of
  its inputs; refuses an existing path that is not a previous output of the same
  format unless `overwrite`; takes the output's lock (`output_lock`: a lock file
  beside it with pid and host under an flock; a second writer fails at once naming
  the holder; a dead holder's lock is taken over); lets the caller write everything into a
  staging folder beside the output (`.OUT.partial`); and only when the caller has
  written the manifest swaps it into place (one atomic exchange where the kernel
  offers it), after which the previous output is removed. A crash, Ctrl-C or a
  full disk leaves the previous output as it was.
- `write_manifest` is called last: it names every part with its size, sha256 and
  row count, plus the producing model and whatever the format needs.
- `read_manifest` refuses (IncompleteOutputError, a ValueError naming the folder
  and the fix) a folder whose manifest is missing, of another format, or does not
  match its parts (missing file, other size; other sha256 with `full=True`).
  Row counts are checked by the format's reader, which knows how to count.

Every file we create honours the umask, as a plain open() would.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

MANIFEST_NAME = "manifest.json"
PARTIAL_MARKER = ".clipkit-partial.json"


class OutputError(ValueError):
    """An output we refuse to write or read; the message names the path and the fix."""


class IncompleteOutputError(OutputError):
    """A multi-file output whose manifest is missing or does not match its parts."""


class OutputInUseError(OutputError):
    """Another live process holds the output's lock."""


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


# ----------------------------------------------------------------------------- manifests

def file_record(path: str | os.PathLike, rows: int | None = None, checksum: bool = True) -> dict:
    """{"bytes", "sha256", "rows"} of one part file."""
    path = Path(path)
    record: dict = {"bytes": path.stat().st_size}
    if checksum:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        record["sha256"] = h.hexdigest()
    if rows is not None:
        record["rows"] = int(rows)
    return record


def write_manifest(folder: str | os.PathLike, format: str, parts: Mapping[str, int | None | dict],
                   **fields) -> dict:
    """Write FOLDER/manifest.json (atomically; call it after every part is written).

    `parts`: relative path -> row count (or None), or an already computed
    `file_record` dict (e.g. from a per-part journal). Returns the manifest.
    """
    folder = Path(folder)
    records = {}
    for rel, value in sorted(parts.items()):
        records[rel] = dict(value) if isinstance(value, dict) else file_record(folder / rel, value)
    from clipkit import __version__

    manifest = {"format": format, **fields, "parts": records, "complete": True, "written": time.time(),
                "clipkit_version": __version__}
    write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def output_format(path: str | os.PathLike) -> str | None:
    """The `format` a clipkit manifest at PATH records, or None (no manifest, not ours, unreadable)."""
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def verify_parts(folder: str | os.PathLike, manifest: dict, full: bool = False, fix: str = "") -> None:
    """Raise IncompleteOutputError unless every listed part exists with its size (and sha256 when `full`)."""
    folder = Path(folder)
    for rel, record in manifest.get("parts", {}).items():
        path = folder / rel
        if not path.is_file():
            raise IncompleteOutputError(f"{str(folder)!r} is incomplete: {rel} listed in its {MANIFEST_NAME} "
                                        f"is missing; {fix}")
        size = path.stat().st_size
        if size != record.get("bytes"):
            raise IncompleteOutputError(f"{str(folder)!r} does not match its {MANIFEST_NAME}: {rel} has {size} "
                                        f"bytes, the manifest says {record.get('bytes')}; {fix}")
        if full and "sha256" in record and file_record(path)["sha256"] != record["sha256"]:
            raise IncompleteOutputError(f"{str(folder)!r} does not match its {MANIFEST_NAME}: {rel} has another "
                                        f"sha256 than the manifest records (changed or damaged); {fix}")


def read_manifest(folder: str | os.PathLike, format: str, fix: str, what: str = "output",
                  full: bool = False) -> dict:
    """The manifest of a complete output of `format` at FOLDER, its parts verified (see verify_parts).

    `fix` is the sentence telling the user how to get a complete one
    (e.g. "re-run `clipkit embed` with the same arguments to finish it").
    """
    folder = Path(folder)
    if not folder.exists():
        partial = partial_dir_for(folder)
        hint = (f"; an interrupted run left {str(partial)!r}: {fix}" if partial.is_dir() else "")
        raise FileNotFoundError(f"{what} {str(folder)!r} does not exist{hint}")
    if not folder.is_dir():
        raise OutputError(f"{what} {str(folder)!r} is a file, not a folder; pass the folder it was written to")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise IncompleteOutputError(f"{what} {str(folder)!r} has no {MANIFEST_NAME}: it was interrupted, is "
                                    f"still being written, or was not made by this clipkit; {fix}")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise OutputError(f"{str(folder)!r} holds a {found or 'non-clipkit'} output, not a {format}; {fix}")
    if manifest.get("complete") is not True or not isinstance(manifest.get("parts"), dict):
        raise IncompleteOutputError(f"{str(path)!r} does not record a complete {format}; {fix}")
    verify_parts(folder, manifest, full=full, fix=fix)
    return manifest


# ----------------------------------------------------------------------------- one writer at a time

_HELD: set[str] = set()          # lock files this process holds (so nested holders do not deadlock)


def lock_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def partial_dir_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.partial"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike):
    """Hold the advisory lock of output PATH (`.NAME.lock` beside it) for the block.

    The lock file holds the writer's pid, host, start time and command, and the
    writer holds an exclusive flock on it, which the kernel drops when the
    process dies (kill -9 included). A second writer raises OutputInUseError at
    once, naming the holder; a lock file left by a dead writer is taken over.
    """
    import fcntl

    path = Path(path)
    lock = lock_path_for(path)
    key = os.path.abspath(lock)
    if key in _HELD:                                  # this process holds it already (e.g. load, add, save)
        yield lock
        return
    for _attempt in range(5):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise _named(e, lock) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (ValueError, OSError):
                holder = {}
            raise OutputInUseError(
                f"{str(path)!r} is being written by another process (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} since {holder.get('since', '?')}: {holder.get('command', '?')}); "
                f"wait for it to finish or stop it") from None
        try:
            same = os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)                                  # the file was replaced / removed meanwhile: try again
    else:
        raise OutputInUseError(f"could not take the lock {str(lock)!r} of {str(path)!r}; retry")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)[:300]}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            lock.unlink()
        raise _named(e, lock) from e
    _HELD.add(key)
    try:
        yield lock
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()                             # still under our flock: nobody else holds this file
        os.close(fd)


# ----------------------------------------------------------------------------- where outputs may go

def _resolved(p) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p)))).resolve()


def check_output_path(path: str | os.PathLike, format: str, inputs: Iterable = (), overwrite: bool = False,
                      flag: str = "--overwrite") -> bool:
    """Refuse an output PATH that would destroy something we did not write; True if PATH holds a previous output.

    Refused: PATH equal to, inside, or containing an input path; an existing
    file, or a non-empty folder that is not a previous `format` output, unless
    `overwrite` (then it is replaced only once the new output is complete).
    """
    path = Path(path)
    target = _resolved(path)
    for item in inputs:
        if item is None or "://" in str(item) or str(item).startswith("pipe:"):
            continue
        src = _resolved(item)
        if target == src or src in target.parents:
            raise OutputError(f"output {str(path)!r} is {'the same path as' if target == src else 'inside'} the "
                              f"input {str(item)!r}; writing there would destroy the input. Choose another output path")
        if target in src.parents:
            raise OutputError(f"output {str(path)!r} contains the input {str(item)!r}; replacing it would destroy "
                              f"the input. Choose another output path")
    for parent in Path(os.path.abspath(path)).parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputError(f"output {str(path)!r} cannot be created: {str(parent)!r} is a file, not a folder; "
                                  f"choose another path")
            break
    if not os.path.lexists(path):
        return False
    if path.is_dir() and not path.is_symlink():
        found = output_format(path)
        if found == format:
            return True
        if not any(path.iterdir()):
            return False
        what = f"a {found}" if found else "a folder that clipkit did not write (or an incomplete output)"
    else:
        what = "a file" if path.is_file() else "something that is not a folder"
    if overwrite:
        return False
    raise OutputError(f"output {str(path)!r} already exists and is {what}; refusing to replace it. Choose another "
                      f"path, or pass {flag} to replace it (only once the new output is complete)")


class Stage:
    """The staging folder of one output being written (see staged_output)."""

    def __init__(self, path: Path, format: str, resumed: bool):
        self.path, self.format, self.resumed = path, format, resumed
        self.dir = partial_dir_for(path)

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r}, dir={str(self.dir)!r}, resumed={self.resumed})"


def begin_stage(path: str | os.PathLike, format: str, resume: bool = False) -> Stage:
    """Create (or, with `resume`, keep) the staging folder `.NAME.partial` beside PATH. Hold the lock first."""
    path = Path(path)
    stage_dir = partial_dir_for(path)
    marker = stage_dir / PARTIAL_MARKER
    resumed = False
    if os.path.lexists(stage_dir):
        ours = marker.is_file() and (read_json(marker, "staging marker") or {}).get("format") == format
        if not ours:
            raise OutputError(f"{str(stage_dir)!r} exists and was not made by clipkit for a {format}; move it away "
                              f"(clipkit stages {str(path)!r} there)")
        if resume:
            resumed = True
        else:
            shutil.rmtree(stage_dir)
    if not resumed:
        try:
            stage_dir.mkdir(parents=True)
        except OSError as e:
            raise _named(e, stage_dir) from e
        write_json(marker, {"format": format, "output": str(path), "pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.time()})
    return Stage(path, format, resumed)


def publish_stage(stage: Stage) -> Path:
    """Swap a finished staging folder into place; refuses one without a manifest of its format."""
    manifest = stage.dir / MANIFEST_NAME
    if not manifest.is_file() or (read_json(manifest, "manifest") or {}).get("format") != stage.format:
        raise IncompleteOutputError(f"{str(stage.dir)!r} has no {stage.format} {MANIFEST_NAME}; not publishing it")
    with contextlib.suppress(FileNotFoundError):
        (stage.dir / PARTIAL_MARKER).unlink()
    _swap_into_place(stage.dir, stage.path)
    return stage.path


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, format: str, *, inputs: Iterable = (), overwrite: bool = False,
                  resume: bool = False, keep_partial: bool = False, flag: str = "--overwrite"):
    """Check PATH (check_output_path), lock it, yield a Stage to write into, then publish it.

    The block must end by calling write_manifest(stage.dir, format, ...). On an
    exception the staging folder is removed, or kept for a later `resume` when
    `keep_partial`; the previous output at PATH is untouched either way.
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_path(path, format, inputs, overwrite, flag)
    with output_lock(path):
        check_output_path(path, format, inputs, overwrite, flag)     # again, now that we hold the lock
        stage = begin_stage(path, format, resume=resume)
        try:
            yield stage
            publish_stage(stage)
        except BaseException as e:
            if not keep_partial:
                shutil.rmtree(stage.dir, ignore_errors=True)
            if isinstance(e, OSError):
                raise _named(e, stage.dir) from e          # a failed write somewhere in the stage: name it
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
