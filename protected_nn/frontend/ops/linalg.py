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
