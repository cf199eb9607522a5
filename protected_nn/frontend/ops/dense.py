"""Gemm and MatMul where one operand is a constant -> Linear (Kronecker products with I)."""
from __future__ import annotations

import numpy as np
import onnx
import scipy.sparse as sp

from protected_nn.errors import UnsupportedOpError
from protected_nn.frontend.context import LoweringContext, Tensor, attributes
from protected_nn.frontend.ops.linalg import broadcast_matrix, permutation_matrix


def _right_const(rows: int, B: np.ndarray) -> sp.csr_matrix:
    """Matrix of X -> X @ B for X of shape (rows, K) flattened C-order: kron(I_rows, B^T)."""
    return sp.kron(sp.identity(rows, format="csr"), sp.csr_matrix(B.T), format="csr")


def _left_const(A: np.ndarray, cols: int) -> sp.csr_matrix:
    """Matrix of X -> A @ X for X of shape (K, cols) flattened C-order: kron(A, I_cols)."""
    return sp.kron(sp.csr_matrix(A), sp.identity(cols, format="csr"), format="csr")


def _encrypted_operand(node, ctx: LoweringContext, a: str, b: str) -> tuple[Tensor, np.ndarray, bool]:
    """(encrypted operand, constant operand, encrypted-is-left). Both encrypted: unsupported."""
    if ctx.is_encrypted(a) and ctx.is_encrypted(b):
        raise UnsupportedOpError(
            f"{node.op_type} node '{node.name}': both operands ('{a}', '{b}') depend on the input; "
            f"a product of two encrypted matrices is not supported, one operand must be a constant")
    if ctx.is_encrypted(a):
        return ctx.tensor(a, node), np.asarray(ctx.const(b, node), dtype=np.float64), True
    return ctx.tensor(b, node), np.asarray(ctx.const(a, node), dtype=np.float64), False


def lower_gemm(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """Y = alpha * A' B' + beta * C with A' = A^T if transA, B' = B^T if transB."""
    attrs = attributes(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))
    x, const, left = _encrypted_operand(node, ctx, node.input[0], node.input[1])
    where = f"Gemm node '{node.name}'"
    if len(x.shape) != 2 or const.ndim != 2:
        raise UnsupportedOpError(f"{where}: operands must be 2-D (got {x.shape}, {const.shape})")
    if left:   # A encrypted, B constant
        A_shape = x.shape[::-1] if trans_a else x.shape
        P = permutation_matrix(x.shape, (1, 0)) if trans_a else sp.identity(x.size, format="csr")
        B = const.T if trans_b else const
        if A_shape[1] != B.shape[0]:
            raise UnsupportedOpError(f"{where}: inner dimensions differ ({A_shape} x {B.shape})")
        M, N = A_shape[0], B.shape[1]
        mat = _right_const(M, B) @ P
    else:      # A constant, B encrypted
        A = const.T if trans_a else const
        B_shape = x.shape[::-1] if trans_b else x.shape
        P = permutation_matrix(x.shape, (1, 0)) if trans_b else sp.identity(x.size, format="csr")
        if A.shape[1] != B_shape[0]:
            raise UnsupportedOpError(f"{where}: inner dimensions differ ({A.shape} x {B_shape})")
        M, N = A.shape[0], B_shape[1]
        mat = _left_const(A, N) @ P
    bias = None
    if len(node.input) > 2 and node.input[2]:
        C = np.asarray(ctx.const(node.input[2], node, "bias C"), dtype=np.float64)
        try:
            bias = beta * np.broadcast_to(C, (M, N))
        except ValueError:
            raise UnsupportedOpError(f"{where}: C {C.shape} does not broadcast to {(M, N)}") from None
    ctx.linear(node, x, alpha * mat, bias, (M, N))


def _batched_right_const(node, x: Tensor, B: np.ndarray) -> tuple[sp.csr_matrix, tuple[int, ...]]:
    """numpy.matmul(x, B) with B constant, any ranks (1-D operands and batch broadcasting as in
    numpy): one block kron(I_M, B_i^T) per batch entry after broadcasting x's batch axes."""
    b_vec, x_vec = B.ndim == 1, len(x.shape) == 1
    Bm = B[:, None] if b_vec else B
    xs = (1, x.shape[0]) if x_vec else x.shape
    if xs[-1] != Bm.shape[-2]:
        raise UnsupportedOpError(f"MatMul node '{node.name}': inner dimensions differ "
                                 f"({x.shape} x {B.shape})")
    try:
        batch = tuple(np.broadcast_shapes(tuple(xs[:-2]), tuple(Bm.shape[:-2])))
    except ValueError:
        raise UnsupportedOpError(f"MatMul node '{node.name}': batch axes of {x.shape} and "
                                 f"{B.shape} do not broadcast") from None
    M, K, N = xs[-2], xs[-1], Bm.shape[-1]
    rows = int(np.prod(batch, dtype=np.int64)) * M
    if Bm.ndim == 2:
        mat = _right_const(rows, Bm)
    else:
        blocks = np.broadcast_to(Bm, (*batch, K, N)).reshape(-1, K, N)
        mat = sp.block_diag([_right_const(M, b) for b in blocks], format="csr")
    mat = mat @ broadcast_matrix(xs, (*batch, M, K))
    out = (*batch, *(() if x_vec else (M,)), *(() if b_vec else (N,)))
    return mat, out


def lower_matmul(node: onnx.NodeProto, ctx: LoweringContext) -> None:
    """x @ W with W constant (numpy.matmul semantics, batch axes broadcast), or W @ x with W
    constant 2-D and x 2-D."""
    x, const, left = _encrypted_operand(node, ctx, node.input[0], node.input[1])
    where = f"MatMul node '{node.name}'"
    if left:
        mat, out_shape = _batched_right_const(node, x, const)
        ctx.linear(node, x, mat, None, out_shape)
        return
    if len(x.shape) != 2 or const.ndim != 2:
        raise UnsupportedOpError(f"{where}: constant @ encrypted needs 2-D operands "
                                 f"(got {const.shape} @ {x.shape})")
    if const.shape[1] != x.shape[0]:
        raise UnsupportedOpError(f"{where}: inner dimensions differ ({const.shape} x {x.shape})")
    ctx.linear(node, x, _left_const(const, x.shape[1]), None, (const.shape[0], x.shape[1]))
