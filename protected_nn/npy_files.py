"""Reading the .npy tensors users hand to the command-line tools (calibration sets, inputs):
one place for every way such a file can be wrong, each with a message that says what to do."""
from __future__ import annotations

import numpy as np

from protected_nn.errors import InputError

NPY_MAGIC = b"\x93NUMPY"


class NpyFileError(InputError):
    """A file that is not a .npy array numpy can load without pickles."""


def load_array(path, what: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise NpyFileError(f"{what} file not found: {path}") from None
    except OSError as e:
        raise NpyFileError(f"{what} file {path} cannot be read: {e.strerror or e}") from None
    if head != NPY_MAGIC:
        # np.load would say "Cannot load file containing pickled data", which misleads: the
        # usual cause is a text or .npz file renamed to .npy
        kind = "an .npz archive" if head.startswith(b"PK") else \
            "a text file" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else \
            "empty" if not head else "not a .npy array"
        raise NpyFileError(f"{what} file {path} is {kind}, not a .npy array (it must start with "
                           f"numpy's .npy header); write it with numpy.save(path, array)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise NpyFileError(f"{what} file {path} is not a readable .npy array: {e}") from None
