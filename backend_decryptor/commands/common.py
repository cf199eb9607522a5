"""Helpers shared by the owner-side commands: the store argument, .npy loading, atomic writes."""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from backend_decryptor.store import Store

STORE_ENV = "FHE_EDGE_STORE"
DEFAULT_STORE = "./fhe-store"


class CommandError(ValueError):
    """Bad command-line input; printed as one `error: ...` line, exit code 2."""


def add_store_argument(parser) -> None:
    parser.add_argument("--store", metavar="DIR", default=None,
                        help=f"model store folder (default: ${STORE_ENV} or {DEFAULT_STORE})")


def store_path(args) -> Path:
    return Path(args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE)


def open_store(args, create: bool = False) -> Store:
    """Only `protect` creates a store; elsewhere a mistyped --store is an error, not a new store.
    A store that cannot be made or opened (not a folder, disk full, unreadable index) is an
    error naming --store and the path, never a raw errno or an SQLite traceback."""
    root = store_path(args)
    try:
        return Store(root, create=create)
    except (OSError, sqlite3.Error) as e:
        raise CommandError(f"--store {root}: {store_failure(e)}") from None


def store_failure(e: BaseException) -> str:
    """The reason of an OSError or SQLite error met while writing to the store, without errno."""
    return getattr(e, "strerror", None) or str(e)


def remove_empty_store(root: Path) -> None:
    """Undo the creation of a store by a `protect` that failed: called only when the store did
    not exist before, so what is inside came from this run; removed only if no file but the
    index is there."""
    try:
        files = [p for p in root.rglob("*") if p.is_file()]
    except OSError:
        return
    if all(p.parent == root and p.name.startswith("index.sqlite") for p in files):
        shutil.rmtree(root, ignore_errors=True)


def load_npy(path, what: str) -> np.ndarray:
    """np.load without pickles; every way a file can be wrong becomes one clear CommandError."""
    from protected_nn.npy_files import NpyFileError, load_array
    try:
        return load_array(path, what)
    except NpyFileError as e:
        raise CommandError(str(e)) from None


def write_atomic(path: Path, data: bytes, option: str = "--out", fsync: bool = False) -> None:
    from protected_nn.npy_files import write_file
    write_file(path, data, option, fsync=fsync)


def save_npy_atomic(path: Path, array: np.ndarray, option: str = "--out") -> None:
    from protected_nn.npy_files import save_array
    save_array(path, array, option)
