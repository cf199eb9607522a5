"""The files users hand to and get from the command-line tools (calibration sets, inputs, results,
bundles, outputs): one place for every way such a file can be wrong, each with a message that names
the option and the path and says what to do. Writes are atomic and leave no temporary file behind
when they fail (a full disk, a folder that does not exist)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from protected_nn.errors import InputError

NPY_MAGIC = b"\x93NUMPY"


class NpyFileError(InputError):
    """A file that is not a .npy array numpy can load without pickles."""


class OutputFileError(InputError):
    """A file a command was asked to write cannot be written (it names the option and the path)."""


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


def write_file(path, data: bytes, option: str, fsync: bool = False) -> None:
    """Write `data` to `path` atomically (a hidden temporary file beside it, then a rename): the
    file appears complete or not at all, and a failed write removes its temporary file. `option`
    names the setting the path came from (e.g. '--out') for the error message."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise output_error(option, path, e) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def save_array(path, array: np.ndarray, option: str) -> None:
    """numpy.save, atomically and without pickles (see write_file)."""
    import io
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_file(path, buffer.getvalue(), option)


def make_folder(path, option: str) -> Path:
    """Create the folder `path` (and its parents) or raise an OutputFileError naming `option`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(option, path, e, "create the folder") from None
    return path


def output_error(option: str, path, e: OSError, action: str = "write") -> OutputFileError:
    """'OPTION PATH: cannot ACTION: reason' for an OSError met writing `path`."""
    return OutputFileError(f"{option} {path}: cannot {action}: {_reason(e, Path(path))}")


def _reason(e: OSError, path: Path) -> str:
    """The errno text, plus which parent is missing or not a folder: 'No such file or directory'
    alone does not say whether the file or its folder is meant."""
    reason = e.strerror or str(e)
    parent = path.parent
    if not parent.exists():
        reason += f" (folder {parent} does not exist)"
    elif not parent.is_dir():
        reason += f" ({parent} is not a folder)"
    return reason


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
