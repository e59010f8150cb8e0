"""Crash-safe output: nothing we write is ever half-written, mixed, lost, or someone else's.

Single files and small folders (a model, a config):

    with atomic_file("x.bin") as f: f.write(...)      # temp sibling + fsync + rename
    write_json("x.json", obj)
    with atomic_directory("model_dir") as tmp: ...     # a temp sibling folder swapped in whole

Every writer claims its output first, through one rule (`check_output_path`):
an output may be new, or ours (a folder with our manifest.json or our
.clipkit-output.json marker; a file recorded with its sha256 in the
.clipkit-files.json beside it), or anything else only with `--overwrite`; and
it is never an input, inside an input, or a folder containing one.

    claim_output("runs/lab", "clipkit-spiral-lab", overwrite=False)        # a folder of loose files, marked ours
    with output_file("predictions.csv", "clipkit-predictions", inputs=[images], mode="w") as f: ...
    ClipModel.save / UnCLIP.save / save_model                               # staged_output, below

Multi-file outputs (embedding folders, indexes, models, unCLIP models) follow
one completeness contract:

    with staged_output("OUT", "clipkit-index", inputs=["EMB"], overwrite=False) as stage:
        ...write the parts into stage.dir...
        write_manifest(stage.dir, "clipkit-index", {"index.faiss": None, "ids.npy": n}, model=..., count=n)
    manifest = read_manifest("OUT", "clipkit-index", fix="rebuild it with `clipkit index build`")

- `staged_output` claims PATH (check_output_path), takes the output's lock
  (`output_lock`: a lock file beside it with pid and host under an flock, created
  with O_EXCL | O_NOFOLLOW and never written unless we created it; a second
  writer fails at once naming the holder; a dead holder's lock is retired); lets
  the caller write everything into a staging folder beside the output
  (`.OUT.partial`); and only when the caller has written the manifest swaps it
  into place (one atomic exchange where the kernel offers it), after which the
  previous output is removed. A crash, Ctrl-C or a full disk leaves the previous
  output as it was.
- `write_manifest` is called last: it names every part with its size, sha256 and
  row count, plus the producing model and whatever the format needs.
- Readers verify what they read: `read_manifest` refuses (IncompleteOutputError /
  DamagedFileError, ValueErrors naming the folder and the fix) a folder whose
  manifest is missing, of another format, or does not match its parts (missing
  file, other size, other sha256); `verify_file` checks one part as a reader
  opens it; `clipkit.io.weights.load_weights` does the same for weights and
  refuses pickles. Every reader of models, pipelines, embedding folders, indexes
  and checkpoints hashes each file before it parses it: ~0.07 s per 100 MB here
  (a 102 MB index loads in 0.15 s verified, 0.08 s not); `verify=False`
  (`--no-verify`) skips the hash for very large reads and keeps the size check.
- Temporary siblings carry their writer's pid and host; a writer killed with -9
  leaves one, and the next write of the same path removes it, with the staging
  folder and the lock the killed writer left (they are recognised as ours).

Errors (clipkit.io.errors): every failure a user can fix is a `UserError`
(and a ValueError / RuntimeError as before); the CLI prints it as one line, exit 2.
Every count the public API takes goes through `positive_int` (an int or a NumPy
integer >= 1, never a bool).

Every file we create honours the umask, as a plain open() would.
"""

from clipkit.io.errors import (  # noqa: F401
    BadImageError,
    DamagedFileError,
    IncompleteOutputError,
    NonFiniteError,
    OutputError,
    OutputInUseError,
    UserError,
    WeightsMismatchError,
)
from clipkit.io.files import (  # noqa: F401
    atomic_directory,
    atomic_file,
    atomic_path,
    clean_stale_temps,
    current_umask,
    exchange_paths,
    read_json,
    write_json,
)
from clipkit.io.outputs import (  # noqa: F401
    FILES_MARKER,
    MANIFEST_NAME,
    OUTPUT_MARKER,
    PARTIAL_MARKER,
    Stage,
    begin_stage,
    check_output_path,
    claim_output,
    file_record,
    lock_path_for,
    output_file,
    output_format,
    output_lock,
    output_owner,
    partial_dir_for,
    publish_stage,
    read_manifest,
    register_file,
    sha256_file,
    staged_output,
    verify_file,
    verify_parts,
    write_manifest,
)

__all__ = [
    "BadImageError",
    "DamagedFileError",
    "FILES_MARKER",
    "IncompleteOutputError",
    "MANIFEST_NAME",
    "NonFiniteError",
    "OUTPUT_MARKER",
    "OutputError",
    "OutputInUseError",
    "PARTIAL_MARKER",
    "Stage",
    "UserError",
    "WeightsMismatchError",
    "atomic_directory",
    "atomic_file",
    "atomic_path",
    "begin_stage",
    "check_output_path",
    "claim_output",
    "clean_stale_temps",
    "current_umask",
    "exchange_paths",
    "file_record",
    "lock_path_for",
    "output_file",
    "output_format",
    "output_lock",
    "output_owner",
    "partial_dir_for",
    "publish_stage",
    "read_json",
    "read_manifest",
    "register_file",
    "sha256_file",
    "staged_output",
    "verify_file",
    "verify_parts",
    "write_json",
    "write_manifest",
]
