"""Planner (no encryption): each layer's ciphertext products next to its floor, (trained weights
x output positions they apply at) / slots, for CNNs of strided convolutions of several shapes.
Issue 9 asks for at most 2x the floor per layer. Layers whose floor is a few products are held
to a small constant instead: a layer writing n outputs folds a period of at least n (+ the
owner's zero homes for the result), so it needs that many products however few its weights."""
from __future__ import annotations

import numpy as np
import pytest

from protected_nn import zoo
from protected_nn.compiler.planner import compile_graph
from protected_nn.frontend import load_onnx

SMALL_FLOOR = 4        # below this many products the floor is not the binding limit
SMALL_LAYER_MAX = 16


def strided_cnn(seed: int, in_chw, convs, n_outputs=3, pool_head=True):
    """in_chw -> [conv k x k stride s pad k//2 -> BatchNorm -> x*x] per (c_out, k, s) -> global
    average pool (or flatten) -> dense to n_outputs."""
    b = zoo._Builder(np.random.default_rng(seed))
    h, (c, size, _) = "input", in_chw
    for i, (c_out, k, s) in enumerate(convs, start=1):
        p = k // 2
        h = b.square(b.batchnorm(b.conv(h, f"conv{i}", c, c_out, k, s, (p, p, p, p)), f"bn{i}", c_out))
        c, size = c_out, (size + 2 * p - k) // s + 1
    if pool_head:
        h = b.node("GlobalAveragePool", [h], "gap")
        n_in = c
    else:
        n_in = c * size * size
    h = b.node("Flatten", [h], "flatten", axis=1)
    y = b.gemm(h, "fc", n_in, n_outputs)
    model = zoo._finish(b, y, (1, *in_chw), (1, n_outputs), f"strided_cnn_{seed}", None)
    return zoo._limit_preactivations(model, seed)


def _layers(model):
    graph = load_onnx(model, calibration=None, poly_degree=4, input_range=(0.0, 1.0),
                      calibration_samples=2)
    return [s for s in compile_graph(graph, 8).layer_stats if "floor_products" in s]


def _check(layers):
    assert layers, "the multi-ciphertext packing should be chosen for this model"
    for s in layers:
        floor = s["floor_products"]
        assert s["products"] >= floor * 0.99, s          # a true lower bound
        limit = 2 * floor if floor >= SMALL_FLOOR else SMALL_LAYER_MAX
        assert s["products"] <= limit, f"{s['layer']}: {s['products']} products, floor {floor}"


def test_strided_chain_within_twice_the_floor():
    """Another shape than the issue's: 3 channels, a stride-1 first convolution, 8/16/32."""
    _check(_layers(strided_cnn(0, (3, 32, 32), [(8, 3, 1), (16, 3, 2), (32, 3, 2)])))


@pytest.mark.xfail(strict=True, reason="few channels: conv3 reads 8x16x16 = 2,048 values, a quarter "
                   "of a ciphertext, and each product reads each of them once, so conv3 needs about "
                   "4x its floor (64 products against 8.3)")
def test_narrow_strided_chain_within_twice_the_floor():
    _check(_layers(strided_cnn(0, (1, 64, 64), [(4, 3, 2), (8, 3, 2), (16, 3, 2)])))


def test_crowd_cnn_within_twice_the_floor():
    _check(_layers(zoo.crowd_cnn(0)))


@pytest.mark.xfail(strict=True, reason="LeNet-5's conv2 reads the 6x14x14 pooled tensor (its pool "
                   "a rotate-and-add sum) as 4 clean copies that all repeat every 2,048 slots, so a "
                   "product still serves at most one input channel per output channel: ~200 products "
                   "against the unfused floor 29.3; fc1 reads 2 shifted copies: 64 against 5.9 "
                   "(bench/results/engine.md, round 4)")
def test_lenet5_within_twice_the_floor():
    _check(_layers(zoo.lenet5(0)))
