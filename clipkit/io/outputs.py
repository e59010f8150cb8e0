"""Outputs: which paths we may write (claims), one writer at a time (locks), manifests, verified reads.

    claim_output("runs/lab", "clipkit-spiral-lab", overwrite=args.overwrite)        # a folder of loose files
    with output_file("predictions.csv", "clipkit-predictions", inputs=[images], mode="w") as f: ...
    with staged_output("OUT", "clipkit-index", inputs=["EMB"]) as stage: ...        # complete or absent
    manifest = read_manifest("OUT", "clipkit-index", fix="rebuild it")             # sha256 of every part checked

See the package docstring (clipkit.io) for the contract these implement.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import braceexpand

from clipkit import __version__
from clipkit.io.errors import DamagedFileError, IncompleteOutputError, OutputError, OutputInUseError  # noqa: F401
from clipkit.io.files import (
    _named,
    _swap_into_place,
    _temp_prefix,
    atomic_file,
    clean_stale_temps,
    current_umask,
    process_alive,
    read_json,
    write_json,
)

MANIFEST_NAME = "manifest.json"
PARTIAL_MARKER = ".clipkit-partial.json"
OUTPUT_MARKER = ".clipkit-output.json"  # in a folder of loose files we write into (a lab, a run folder)
FILES_MARKER = ".clipkit-files.json"  # in a folder holding single-file outputs of ours (a CSV, a PNG)


# ----------------------------------------------------------------------------- hashing and verified reads

# sha256 streams at 0.84-1.5 GB/s on the 2-core development machine (SHA-NI; a 100 MB file read in 4 MB
# blocks; the low end while other jobs ran): verifying a 100 MB model or index costs 0.07-0.1 s, a 10 GB
# embedding folder 7-10 s. Readers hash a file before they parse it (never parsing unverified bytes; the parse
# then reads it back from the page cache), by default; `verify=False` (`--no-verify` where a command reads
# indexes or embedding folders) skips the hash and keeps the size check.
_BLOCK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed in 4 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike, rows: int | None = None, checksum: bool = True) -> dict:
    """{"bytes", "sha256", "rows"} of one part file."""
    path = Path(path)
    record: dict = {"bytes": path.stat().st_size}
    if checksum:
        record["sha256"] = sha256_file(path)
    if rows is not None:
        record["rows"] = int(rows)
    return record


def verify_file(
    path: str | os.PathLike,
    record: Mapping,
    *,
    verify: bool = True,
    folder: str | os.PathLike | None = None,
    fix: str = "",
) -> None:
    """The one check of a file against what its manifest recorded: it exists, has its size, and (unless
    `verify=False`) its sha256. Raises IncompleteOutputError (missing / other size) or DamagedFileError
    (same size, other bytes: the damage a size check cannot see), naming the file (within `folder`,
    the output whose manifest lists it) and `fix`."""
    path = Path(path)
    if folder is not None:
        where, rel = str(folder), path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)
    else:
        where, rel = str(path.parent), path.name
    if not path.is_file():
        raise IncompleteOutputError(f"{where!r} is incomplete: {rel} listed in its {MANIFEST_NAME} is missing; {fix}")
    size = path.stat().st_size
    if record.get("bytes") is not None and size != record["bytes"]:
        raise IncompleteOutputError(
            f"{where!r} does not match its {MANIFEST_NAME}: {rel} has {size} bytes, the "
            f"manifest says {record['bytes']}; {fix}"
        )
    if verify and record.get("sha256") and sha256_file(path) != record["sha256"]:
        raise DamagedFileError(
            f"{where!r} does not match its {MANIFEST_NAME}: {rel} has another sha256 than the "
            f"manifest records (damaged or changed since it was written); {fix}"
        )


# ----------------------------------------------------------------------------- manifests


def write_manifest(folder: str | os.PathLike, format: str, parts: Mapping[str, int | None | dict], **fields) -> dict:
    """Write FOLDER/manifest.json (atomically; call it after every part is written).

    `parts`: relative path -> row count (or None), or an already computed
    `file_record` dict (e.g. from a per-part journal). Returns the manifest.
    """
    folder = Path(folder)
    records = {}
    for rel, value in sorted(parts.items()):
        records[rel] = dict(value) if isinstance(value, dict) else file_record(folder / rel, value)
    manifest = {
        "format": format,
        **fields,
        "parts": records,
        "complete": True,
        "written": time.time(),
        "clipkit_version": __version__,
    }
    write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def _json_format(path: Path) -> str | None:
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError):
        return None
    return data.get("format") if isinstance(data, dict) and isinstance(data.get("format"), str) else None


def output_format(path: str | os.PathLike) -> str | None:
    """The `format` a clipkit manifest at PATH records, or None (no manifest, not ours, unreadable)."""
    return _json_format(Path(path) / MANIFEST_NAME)


def verify_parts(
    folder: str | os.PathLike, manifest: dict, verify: bool = True, fix: str = "", full: bool | None = None
) -> None:
    """verify_file for every part the manifest lists (`full` is the older name of `verify`)."""
    verify = verify if full is None else full
    folder = Path(folder)
    for rel, record in manifest.get("parts", {}).items():
        verify_file(folder / rel, record, verify=verify, folder=folder, fix=fix)


def read_manifest(
    folder: str | os.PathLike,
    format: str,
    fix: str,
    what: str = "output",
    full: bool | None = None,
    *,
    verify: bool = True,
) -> dict:
    """The manifest of a complete output of `format` at FOLDER, every part checked (verify_parts: size, and
    sha256 unless `verify=False`; `full` is the older name of `verify`).

    `fix` is the sentence telling the user how to get a complete one
    (e.g. "re-run `clipkit embed` with the same arguments to finish it").
    """
    folder = Path(folder)
    if not folder.exists():
        partial = partial_dir_for(folder)
        hint = f"; an interrupted run left {str(partial)!r}: {fix}" if partial.is_dir() else ""
        raise FileNotFoundError(f"{what} {str(folder)!r} does not exist{hint}")
    if not folder.is_dir():
        raise OutputError(f"{what} {str(folder)!r} is a file, not a folder; pass the folder it was written to")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise IncompleteOutputError(
            f"{what} {str(folder)!r} has no {MANIFEST_NAME}: it was interrupted, is "
            f"still being written, or was not made by this clipkit; {fix}"
        )
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise OutputError(f"{str(folder)!r} holds a {found or 'non-clipkit'} output, not a {format}; {fix}")
    if manifest.get("complete") is not True or not isinstance(manifest.get("parts"), dict):
        raise IncompleteOutputError(f"{str(path)!r} does not record a complete {format}; {fix}")
    verify_parts(folder, manifest, verify=verify if full is None else full, fix=fix)
    return manifest


# ----------------------------------------------------------------------------- one writer at a time

_HELD: set[str] = set()  # lock files this process holds (so nested holders do not deadlock)


def lock_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def partial_dir_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def _stage_is_ours(stage_dir: Path, format: str) -> bool:
    """A staging folder a writer of `format` left (killed with -9, a full disk, a crash): it carries our
    partial marker (killed while writing the parts), or a manifest of `format` and no marker (killed while
    publishing: between removing the marker and the swap, or after the swap, when it holds the previous
    output of ours that was being removed)."""
    if stage_dir.is_symlink() or not stage_dir.is_dir():
        return False
    return _json_format(stage_dir / PARTIAL_MARKER) == format or output_format(stage_dir) == format


def _dead_writer(holder: dict) -> bool:
    """True when the lock's recorded writer ran on this host and no longer exists."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    return not process_alive(pid)


def _not_ours(lock: Path, what: str) -> OutputError:
    return OutputError(
        f"lock file {str(lock)!r} {what}; clipkit did not make it and will not write through it. "
        f"Remove it (or choose another output path)"
    )


def check_lock_name(lock: Path) -> None:
    """Refuse, before any work, a lock name taken by something clipkit never creates there (a symbolic link,
    a hard link, a folder or a device): output_lock would refuse it anyway, only later."""
    try:
        st = os.lstat(lock)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(st.st_mode):
        raise _not_ours(lock, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _not_ours(lock, "is not a plain file")
    if st.st_nlink != 1:
        raise _not_ours(lock, "has other names (a hard link)")


def _open_existing_lock(lock: Path) -> int | None:
    """An fd on the existing lock file (no link followed), or None when it vanished meanwhile."""
    check_lock_name(lock)  # a FIFO would block the open; a link is never followed
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_ours(lock, "is a symbolic link") from None
        raise _named(e, lock) from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise _not_ours(
            lock, "is not a plain file" if not stat.S_ISREG(st.st_mode) else "has other names (a hard link)"
        )
    return fd


def _holder(fd: int, lock: Path) -> dict:
    """The JSON a clipkit writer put in its lock file ({} for an empty one); anything else is refused."""
    data = os.pread(fd, 4096, 0)
    if not data.strip():
        return {}
    try:
        holder = json.loads(data)
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not {"pid", "host"} <= set(holder):
        raise _not_ours(lock, "holds something else than a clipkit lock")
    return holder


@contextlib.contextmanager
def output_lock(path: str | os.PathLike):
    """Hold the advisory lock of output PATH (`.NAME.lock` beside it) for the block.

    The lock file holds the writer's pid, host, start time and command, and the
    writer holds an exclusive flock on it, which the kernel drops when the
    process dies (kill -9 included). A second writer raises OutputInUseError at
    once, naming the holder; a lock file left by a dead writer is removed and
    made anew. The lock file is only ever written when this process created it
    (O_CREAT | O_EXCL | O_NOFOLLOW): a symbolic link, a hard link or a file that
    is not a clipkit lock at that name is refused, never followed or truncated.
    """
    import fcntl

    path = Path(path)
    lock = lock_path_for(path)
    key = os.path.abspath(lock)
    if key in _HELD:  # this process holds it already (e.g. load, add, save)
        yield lock
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _named(e, lock.parent) from e
    for _attempt in range(8):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            existing = _open_existing_lock(lock)
            if existing is None:
                continue  # removed meanwhile: create it again
            fd = existing
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = _holder(fd, lock)
                finally:
                    os.close(fd)
                if _dead_writer(holder):
                    # The writer is gone but a process it forked (a DataLoader worker) still holds the
                    # flock on this file: retire the file; the orphan keeps a lock on nothing.
                    with contextlib.suppress(OSError):
                        lock.unlink()
                    continue
                raise OutputInUseError(
                    f"{str(path)!r} is being written by another process (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')}: {holder.get('command', '?')}); "
                    f"wait for it to finish or stop it"
                ) from None
            try:
                _holder(fd, lock)  # a stale clipkit lock (its writer died): retire it
                if os.path.lexists(lock) and os.lstat(lock).st_ino == os.fstat(fd).st_ino:
                    lock.unlink()
            finally:
                os.close(fd)  # drops the flock
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _not_ours(lock, "is a symbolic link") from None
            raise _named(e, lock) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.lstat(lock).st_ino == os.fstat(fd).st_ino
        except (BlockingIOError, FileNotFoundError):
            same = False
        if same:
            break
        os.close(fd)  # retired by a peer between create and flock: again
    else:
        raise OutputInUseError(f"could not take the lock {str(lock)!r} of {str(path)!r}; retry")
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        os.write(fd, json.dumps(me).encode())  # a file we just created: nobody else's bytes
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
            if os.lstat(lock).st_ino == os.fstat(fd).st_ino:
                lock.unlink()  # still under our flock: nobody else holds this file
        os.close(fd)


# ----------------------------------------------------------------------------- where outputs may go


def _resolved(p) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p)))).resolve()


def _input_paths(item) -> list[str]:
    """The existing local paths an input argument names: '::' lists and brace patterns expanded (the first
    10,000); URLs, pipes and names that are no path (a preset such as 'shapes-tiny') are left out."""
    out: list[str] = []
    for part in str(item).split("::"):
        if not part or "://" in part or part.startswith("pipe:"):
            continue
        names = itertools.islice(braceexpand.braceexpand(part), 10_000) if "{" in part else [part]
        out.extend(name for name in names if os.path.lexists(os.path.expanduser(name)))
    return out


def _files_registry(folder: Path) -> dict:
    data = None
    marker = folder / FILES_MARKER
    if marker.is_file() and not marker.is_symlink():
        with contextlib.suppress(ValueError, OSError, RecursionError):
            data = json.loads(marker.read_text(encoding="utf-8"))
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def output_owner(
    path: str | os.PathLike, kind: str = "folder", recognise: Callable[[Path], str | None] | None = None
) -> str | None:
    """The clipkit format that wrote PATH, or None when clipkit did not (or it changed since).

    A folder is ours by its manifest.json (a complete staged output) or its
    .clipkit-output.json marker (a folder of loose files we claimed); a file is
    ours when the .clipkit-files.json beside it records it with the sha256 it
    still has (a file the user edited or replaced is theirs again), or when `recognise(path)` names
    its format (a format whose content says it is ours, e.g. JSON lines of evaluation rows).
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return None
    if kind == "folder":
        if not path.is_dir():
            return None
        return output_format(path) or _json_format(path / OUTPUT_MARKER)
    if not path.is_file():
        return None
    record = _files_registry(path.parent).get(path.name)
    if isinstance(record, dict) and record.get("bytes") == path.stat().st_size:
        with contextlib.suppress(OSError):
            if sha256_file(path) == record.get("sha256"):
                return record.get("format")
    return recognise(path) if recognise is not None else None


def check_output_path(
    path: str | os.PathLike,
    format: str,
    inputs: Iterable = (),
    overwrite: bool = False,
    flag: str = "--overwrite",
    *,
    kind: str = "folder",
    recognise: Callable[[Path], str | None] | None = None,
    staged: bool = False,
) -> bool:
    """The one rule of every writer: may output PATH (a `kind` "folder" or "file" of `format`) be written?

    Returns True when PATH holds a previous output of ours of the same format, False when it is new
    (an empty folder counts as new) or `overwrite` lets us replace what is there. Refused (OutputError,
    one line naming the path and the fix): PATH equal to, inside, or containing an input path; a
    parent that is a file; an existing path that is not ours (see output_owner) unless `overwrite`;
    a folder where a single file is to go, even with `overwrite`; a lock name beside PATH taken by
    something clipkit did not make there, and for a `staged` output (staged_output) its staging folder
    name too (even with `overwrite`).
    """
    if kind not in ("folder", "file"):
        raise ValueError(f"kind={kind!r}; expected 'folder' or 'file'")
    path = Path(path)
    target = _resolved(path)
    for item in inputs:
        if item is None:
            continue
        for name in _input_paths(item):
            src = _resolved(name)
            if target == src or src in target.parents:
                raise OutputError(
                    f"output {str(path)!r} is {'the same path as' if target == src else 'inside'} "
                    f"the input {str(name)!r}; writing there would change the input. Choose another "
                    f"output path"
                )
            if target in src.parents:
                raise OutputError(
                    f"output {str(path)!r} contains the input {str(name)!r}; replacing it would "
                    f"destroy the input. Choose another output path"
                )
    check_lock_name(lock_path_for(path) if kind == "folder" else lock_path_for(path.parent / FILES_MARKER))
    stage_dir = partial_dir_for(path)
    if staged and os.path.lexists(stage_dir) and not _stage_is_ours(stage_dir, format):
        raise OutputError(
            f"{str(stage_dir)!r} exists and was not made by clipkit for a {format}; move it away "
            f"(clipkit stages {str(path)!r} there)"
        )
    for parent in Path(os.path.abspath(path)).parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputError(
                    f"output {str(path)!r} cannot be created: {str(parent)!r} is a file, not a "
                    f"folder; choose another path"
                )
            break
    if not os.path.lexists(path):
        return False
    found = output_owner(path, kind, recognise)
    if found == format:
        return True
    if kind == "folder" and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return False
    if path.is_symlink():
        what = "a symbolic link"
    elif path.is_dir():
        what = (
            f"a {found} output"
            if found
            else ("a folder that clipkit did not write (or an incomplete output)" if kind == "folder" else "a folder")
        )
    else:
        what = (
            f"a {found} output"
            if found
            else ("a file that clipkit did not write (or that changed since)" if kind == "file" else "a file")
        )
    if kind == "file" and path.is_dir() and not path.is_symlink():
        raise OutputError(
            f"output {str(path)!r} is a folder; this output is a file: give a file path (e.g. {str(path / 'out')!r})"
        )
    if overwrite:
        return False
    raise OutputError(
        f"output {str(path)!r} already exists and is {what}; refusing to replace it. Choose another "
        f"path, or pass {flag} to replace it"
    )


def _mark_folder(path: Path, format: str) -> None:
    write_json(
        path / OUTPUT_MARKER,
        {"format": format, "claimed": time.time(), "pid": os.getpid(), "command": " ".join(sys.argv)[:300]},
    )


def claim_output(
    path: str | os.PathLike,
    format: str,
    inputs: Iterable = (),
    overwrite: bool = False,
    flag: str = "--overwrite",
    *,
    kind: str = "folder",
) -> Path:
    """check_output_path, then take the path: a folder of loose files is created and marked ours
    (.clipkit-output.json), so the next run into it (a resume, a re-run) is recognised; a file is
    left to `output_file`, which writes and registers it. With `overwrite`, a file or a symbolic
    link where the folder goes is removed first (the user asked for it). Returns PATH."""
    path = Path(path)
    ours = check_output_path(path, format, inputs, overwrite, flag, kind=kind)
    if kind == "file":
        return path
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        path.unlink()  # only reached with overwrite
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not ours or output_owner(path) != format:
            _mark_folder(path, format)
    except OSError as e:
        raise _named(e, path) from e
    return path


def register_file(path: str | os.PathLike, format: str) -> None:
    """Record a single-file output we just wrote in the .clipkit-files.json beside it (its sha256)."""
    path = Path(path)
    registry = path.parent / FILES_MARKER
    with output_lock(registry):
        files = _files_registry(path.parent)
        files = {k: v for k, v in files.items() if (path.parent / k).is_file()}  # forget deleted files
        files[path.name] = {"format": format, **file_record(path)}
        write_json(registry, {"format": "clipkit-files", "files": files})


@contextlib.contextmanager
def output_file(
    path: str | os.PathLike,
    format: str,
    inputs: Iterable = (),
    overwrite: bool = False,
    flag: str = "--overwrite",
    mode: str = "wb",
    append: bool = False,
    recognise: Callable[[Path], str | None] | None = None,
):
    """Claim a single-file output, write it atomically, record it as ours.

        with output_file("predictions.csv", "clipkit-predictions", inputs=[images], mode="w") as f:
            f.write(...)

    `append=True` starts the new file with the previous one's content (which must be ours).
    """
    path = Path(path)
    ours = check_output_path(path, format, inputs, overwrite, flag, kind="file", recognise=recognise)
    before = path.read_bytes() if append and ours else b""
    if before and "b" not in mode and not before.endswith(b"\n"):
        before += b"\n"  # text appends go on a line of their own
    with atomic_file(path, mode) as f:
        if before:
            f.write(before if "b" in mode else before.decode("utf-8"))
        yield f
    register_file(path, format)


# ----------------------------------------------------------------------------- staged outputs


class Stage:
    """The staging folder of one output being written (see staged_output)."""

    def __init__(self, path: Path, format: str, resumed: bool):
        self.path, self.format, self.resumed = path, format, resumed
        self.dir = partial_dir_for(path)

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r}, dir={str(self.dir)!r}, resumed={self.resumed})"


def begin_stage(path: str | os.PathLike, format: str, resume: bool = False) -> Stage:
    """Create (or, with `resume`, keep) the staging folder `.NAME.partial` beside PATH. Hold the lock first.

    A staging folder a killed writer of this format left is recognised (_stage_is_ours) and removed, or
    kept with `resume` when it still carries its partial marker; anything else at that name is refused.
    The folder is made complete with its marker under a temporary name and renamed into place, so a
    kill -9 at any point leaves either nothing of ours at `.NAME.partial` or a folder we recognise (and a
    temporary sibling that the next writer removes: clean_stale_temps).
    """
    path = Path(path)
    stage_dir = partial_dir_for(path)
    marker = stage_dir / PARTIAL_MARKER
    resumed = False
    clean_stale_temps(stage_dir)
    if os.path.lexists(stage_dir):
        if not _stage_is_ours(stage_dir, format):
            raise OutputError(
                f"{str(stage_dir)!r} exists and was not made by clipkit for a {format}; move it away "
                f"(clipkit stages {str(path)!r} there)"
            )
        if resume and _json_format(marker) == format:
            resumed = True
        else:
            shutil.rmtree(stage_dir)
    if not resumed:
        try:
            fresh = Path(tempfile.mkdtemp(prefix=_temp_prefix(stage_dir), suffix=".tmp", dir=stage_dir.parent))
        except OSError as e:
            raise _named(e, stage_dir) from e
        try:
            os.chmod(fresh, 0o777 & ~current_umask())
            write_json(
                fresh / PARTIAL_MARKER,
                {
                    "format": format,
                    "output": str(path),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.time(),
                },
            )
            os.rename(fresh, stage_dir)
        except OSError as e:
            shutil.rmtree(fresh, ignore_errors=True)
            raise _named(e, stage_dir) from e
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
def staged_output(
    path: str | os.PathLike,
    format: str,
    *,
    inputs: Iterable = (),
    overwrite: bool = False,
    resume: bool = False,
    keep_partial: bool = False,
    flag: str = "--overwrite",
):
    """Check PATH (check_output_path), lock it, yield a Stage to write into, then publish it.

    The block must end by calling write_manifest(stage.dir, format, ...). On an
    exception the staging folder is removed, or kept for a later `resume` when
    `keep_partial`; the previous output at PATH is untouched either way. What a
    writer killed with -9 left (its staging folder, temporary siblings) is
    removed by the next write of PATH (begin_stage, clean_stale_temps).
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_path(path, format, inputs, overwrite, flag, staged=True)
    with output_lock(path):
        check_output_path(path, format, inputs, overwrite, flag, staged=True)  # again, now that we hold the lock
        clean_stale_temps(path)  # a killed atomic writer's siblings of PATH
        stage = begin_stage(path, format, resume=resume)
        try:
            yield stage
            publish_stage(stage)
        except BaseException as e:
            if not keep_partial:
                shutil.rmtree(stage.dir, ignore_errors=True)
            if isinstance(e, OSError):
                raise _named(e, stage.dir) from e  # a failed write somewhere in the stage: name it
            raise
