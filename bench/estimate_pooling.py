"""Planner-only estimate (no encryption): LeNet-5's conv2 and fc1 products when they read the
*pooled* tensor (average pool executed as a rotate-and-add sum, its 1/k folded into the next
layer's weights) instead of today's pool fused into them, in several candidate layouts.

    .venv/bin/python bench/estimate_pooling.py

Counts are the packer's own (mapped.pack_mapped on the candidate maps), not a model of it.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from protected_nn import ir, zoo  # noqa: E402
from protected_nn import ir  # noqa: E402
from protected_nn.compiler import mapped_plan as MP  # noqa: E402
from protected_nn.compiler.layout import CostModel  # noqa: E402
from protected_nn.compiler.mapped import pack_mapped  # noqa: E402
from protected_nn.compiler.structure import close_pattern  # noqa: E402
from protected_nn.compiler.tensor_map import TensorMap, polyphase_map  # noqa: E402
from protected_nn.frontend import loader  # noqa: E402

SLOTS = 8192


def unfused_layers():
    real = ir.fuse_linear
    loader.ir.fuse_linear = lambda g: g
    try:
        graph = loader.load_onnx(zoo.lenet5(0), calibration=None, poly_degree=4,
                                 input_range=(0.0, 1.0), calibration_samples=2)
    finally:
        loader.ir.fuse_linear = real
    return [l for l in graph.layers if isinstance(l, ir.Linear)]


def node(layer, W, in_shape):
    Wc, geo = close_pattern(W, in_shape, layer.shape)
    return ir.Linear(layer.name, ["x"], layer.shape, weights=[Wc], bias=np.asarray(layer.b),
                     geometries=[geo])


def with_copies(tm: TensorMap, period: int) -> TensorMap:
    out = TensorMap(tm.n_cts, tm.ct, tm.slot, [], tm.grid, True, None, tm.poly, 0)
    out.copies = [(tm.ct, (tm.slot + m * period) % SLOTS) for m in range(1, SLOTS // period)]
    return out


def best(nd, in_map, cost, level):
    cands = MP._candidates(nd, [in_map], SLOTS, False) or [None]
    rows = []
    for tm in cands:
        period = 0 if tm is not None else MP.residue_period_for(nd.size, 0, SLOTS)
        pack = pack_mapped(nd.weights, nd.bias, [in_map], tm, SLOTS, level, cost, set(),
                           residue_period=period)
        rows.append((pack.products, pack.rotations, pack.cost_ms, tm))
    return min(rows, key=lambda r: r[2])


def describe(tm):
    if tm is None:
        return "residue"
    return f"cts={tm.n_cts} period={tm.period} poly={tm.poly[1:] if tm.poly else None}"


def main():
    conv1, pool1, conv2, pool2, fc1 = unfused_layers()[:5]
    cost = CostModel(16384, 9)
    s1 = pool1.W.copy()
    s1.data[:] = 1.0                 # the rotation sum: the 1/4 goes into the next weights
    d1 = sp.diags(np.asarray(pool1.W.max(axis=1).todense()).ravel())
    d2 = sp.diags(np.asarray(pool2.W.max(axis=1).todense()).ravel())
    n2 = node(conv2, conv2.W @ d1, pool1.shape)
    n_fc = node(fc1, fc1.W @ d2, pool2.shape)
    print(f"floors: conv2 {n2.weights[0].nnz / SLOTS:.1f}, fc1 {n_fc.weights[0].nnz / SLOTS:.1f}")
    print("conv2 reading the pooled 6x14x14:")
    layouts = {
        "polyphase F=1 row 14, 1 copy": polyphase_map((6, 14, 14), 1, 14, "ch", SLOTS),
        "polyphase F=1 row 14, 4 copies (period 2048)": with_copies(
            polyphase_map((6, 14, 14), 1, 14, "ch", SLOTS), 2048),
        "polyphase F=2 row 7, 1 copy": polyphase_map((6, 14, 14), 2, 7, "ch", SLOTS),
        "polyphase F=2 row 7, 4 copies (period 2048)": with_copies(
            polyphase_map((6, 14, 14), 2, 7, "ch", SLOTS), 2048),
        "polyphase F=2 row 7 ph-order, 4 copies": with_copies(
            polyphase_map((6, 14, 14), 2, 7, "ph", SLOTS), 2048),
    }
    for name, tm in layouts.items():
        p, r, c, out = best(n2, tm, cost, 2)
        print(f"  {name:48s} products {p:4d} rotations {r:3d} est {c:6.0f} ms  out {describe(out)}")
    print("fc1 reading the pooled 16x5x5:")
    for name, tm in {
        "polyphase F=1 row 5, 1 copy": polyphase_map((16, 5, 5), 1, 5, "ch", SLOTS),
        "polyphase F=1 row 5, 8 copies (period 1024)": with_copies(
            polyphase_map((16, 5, 5), 1, 5, "ch", SLOTS), 1024),
    }.items():
        p, r, c, out = best(n_fc, tm, cost, 4)
        print(f"  {name:48s} products {p:4d} rotations {r:3d} est {c:6.0f} ms  out {describe(out)}")


if __name__ == "__main__":
    main()
