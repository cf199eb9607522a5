"""Helpers shared by the owner-side commands: the store argument, .npy loading, atomic writes."""
from __future__ import annotations

import os
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


def open_store(args, create: bool = False) -> Store:
    """Only `protect` creates a store; elsewhere a mistyped --store is an error, not a new store."""
    return Store(Path(args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE), create=create)


def load_npy(path, what: str) -> np.ndarray:
    """np.load without pickles; every way a file can be wrong becomes one clear CommandError."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CommandError(f"{what} file not found: {path}") from None
    except (ValueError, EOFError, OSError) as e:
        raise CommandError(f"{what} file {path} is not a readable .npy array: {e}") from None


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)
