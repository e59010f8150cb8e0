"""Multi-file outputs: manifests, one writer at a time, staged publication (see clipkit.io)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

from clipkit.io.files import _named, _swap_into_place, read_json, write_json

MANIFEST_NAME = "manifest.json"
PARTIAL_MARKER = ".clipkit-partial.json"


class OutputError(ValueError):
    """An output we refuse to write or read; the message names the path and the fix."""


class IncompleteOutputError(OutputError):
    """A multi-file output whose manifest is missing or does not match its parts."""


class OutputInUseError(OutputError):
    """Another live process holds the output's lock."""


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


def _dead_writer(holder: dict) -> bool:
    """True when the lock's recorded writer ran on this host and no longer exists."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
            if _dead_writer(holder):
                # The writer is gone but a process it forked (a DataLoader worker) still holds the
                # flock on this file: retire the file; the orphan keeps a lock on nothing.
                with contextlib.suppress(OSError):
                    lock.unlink()
                continue
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
