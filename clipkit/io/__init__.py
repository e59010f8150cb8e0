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

from clipkit.io.files import (SAVED_CONFIG_EXTRAS, atomic_directory, atomic_file, current_umask,  # noqa: F401
                              dataclass_from_json, exchange_paths, read_json, write_json)
from clipkit.io.outputs import (MANIFEST_NAME, PARTIAL_MARKER, IncompleteOutputError, OutputError,  # noqa: F401
                                OutputInUseError, Stage, begin_stage, check_output_path, file_record,
                                lock_path_for, output_format, output_lock, partial_dir_for, publish_stage,
                                read_manifest, staged_output, verify_parts, write_manifest)

__all__ = ["MANIFEST_NAME", "PARTIAL_MARKER", "SAVED_CONFIG_EXTRAS", "IncompleteOutputError", "OutputError",
           "OutputInUseError", "Stage", "atomic_directory", "atomic_file", "begin_stage", "check_output_path",
           "current_umask", "dataclass_from_json", "exchange_paths", "file_record", "lock_path_for", "output_format",
           "output_lock", "partial_dir_for", "publish_stage", "read_json", "read_manifest", "staged_output",
           "verify_parts", "write_json", "write_manifest"]
