"""Errors a user causes and can fix: each message names the file or value, what was expected, and the fix.

    try:
        clipkit.load("runs/clip/model")
    except DamagedFileError as e:       # also a ValueError, so `except ValueError` keeps working
        print(e)                        # 'runs/clip/model/model.safetensors' has another sha256 than ...

Every class here derives from `UserError` *and* from the builtin a caller would
expect (ValueError for a bad input or file), so library users
catch them as before while the CLI's one error policy (clipkit.cli.main.user_error)
prints any UserError as one line and exits 2. Raise them where the failure is
detected, never by matching messages afterwards.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the failures a user caused (bad input, damaged file, a path that may not be written)."""


class OutputError(UserError, ValueError):
    """An output we refuse to write or read; the message names the path and the fix."""


class IncompleteOutputError(OutputError):
    """A multi-file output whose manifest is missing or does not match its parts."""


class OutputInUseError(OutputError):
    """Another live process holds the output's lock."""


class DamagedFileError(UserError, ValueError):
    """A file whose bytes are not what they should be: another sha256 than its manifest records, a weights file
    that is not safetensors (a pickle renamed, a cut download), a JSON file that does not parse."""


class WeightsMismatchError(UserError, ValueError):
    """Weights that do not fit the model they are loaded into (other shapes or names: another model's file)."""


class BadImageError(UserError, ValueError):
    """An image that cannot be used: it does not decode, is empty (0 pixels) or too large (a decompression bomb).
    `reason` says which ("unreadable", "empty", "too_large"): folder readers count skipped files by it."""

    def __init__(self, message: str = "", reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # pickled across DataLoader workers with its reason
        return (type(self), (str(self), self.reason))


class NonFiniteError(UserError, ValueError):
    """NaN or inf where a finite value is needed (a tensor a user passed); nothing was computed or written from it.
    (A training loss that becomes NaN is clipkit.train.runtime.NonFiniteLossError, a UserError too.)"""


def positive_int(value, name: str) -> int:
    """`value` as an int when it is a whole number >= 1: an int or a NumPy integer (what indexing and array
    arithmetic hand back), never a bool or a float; else ValueError naming `name` and the value. The one check
    of every count a public function takes (k, batch sizes, parts)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive int")
    return int(value)
