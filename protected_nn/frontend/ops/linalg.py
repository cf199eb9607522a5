"""Sparse-matrix building blocks shared by the op handlers (index arithmetic, no pixel loops)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def broadcast_matrix(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> sp.csr_matrix:
    """0/1 matrix S with S @ x.ravel() == np.broadcast_to(x, out_shape).ravel()."""
    n_in = int(np.prod(in_shape, dtype=np.int64))
    idx = np.broadcast_to(np.arange(n_in).reshape(in_shape), out_shape).reshape(-1)
    rows = np.arange(idx.size)
    return sp.csr_matrix((np.ones(idx.size), (rows, idx)), shape=(idx.size, n_in))


def permutation_matrix(in_shape: tuple[int, ...], perm: tuple[int, ...]) -> sp.csr_matrix:
    """P with P @ x.ravel() == x.transpose(perm).ravel()."""
    n = int(np.prod(in_shape, dtype=np.int64))
    idx = np.arange(n).reshape(in_shape).transpose(perm).reshape(-1)
    return sp.csr_matrix((np.ones(n), (np.arange(n), idx)), shape=(n, n))


def diagonal(values: np.ndarray) -> sp.csr_matrix:
    return sp.diags(np.asarray(values, dtype=np.float64).reshape(-1), format="csr")


def selection_matrix(src: np.ndarray, n_in: int) -> sp.csr_matrix:
    """0/1 matrix S with (S @ x)[i] == x[src.flat[i]] where src >= 0 and 0 where src < 0 (those
    positions take a constant, supplied as the bias). `src` is an index array of the output's
    shape: pads, slices, tiles, gathers and channel concatenations are numpy operations on it."""
    src = np.asarray(src, dtype=np.int64).reshape(-1)
    rows = np.flatnonzero(src >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows, src[rows])), shape=(src.size, n_in))


def index_array(shape: tuple[int, ...]) -> np.ndarray:
    """arange over a tensor of `shape`: element i holds its own flat index."""
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
