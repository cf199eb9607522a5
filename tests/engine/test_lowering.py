"""The compiler plans the IR's own layer types: its lowering (Adds into multi-input linear maps,
the one fusion pass, pools kept apart) must keep `ir.evaluate_plain`'s reference semantics."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper

from protected_nn import ir, zoo
from protected_nn.compiler.graph import lower
from protected_nn.frontend import load_onnx


def _residual_model(seed: int = 0):
    """x -> Gemm -> h; s = h*h; y = s + Gemm(s) + h (two joins, one reading h twice) -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name)
             for name, shape in [("A", (6, 8)), ("a", (8,)), ("B", (8, 8)), ("bb", (8,)),
                                 ("C", (8, 3)), ("c", (3,))]]
    nodes = [helper.make_node("Gemm", ["x", "A", "a"], ["h"], name="g1"),
             helper.make_node("Mul", ["h", "h"], ["s"], name="sq"),
             helper.make_node("Gemm", ["s", "B", "bb"], ["r"], name="g2"),
             helper.make_node("Sum", ["s", "r", "h"], ["j"], name="join"),
             helper.make_node("Gemm", ["j", "C", "c"], ["y"], name="g3")]
    graph = helper.make_graph(nodes, "residual",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _lowered(graph: ir.Graph) -> ir.Graph:
    nodes, output = lower(graph)
    return ir.Graph(layers=nodes, output=output, output_shape=graph.output_shape,
                    input_name=graph.input_name)


@pytest.mark.parametrize("make", [_residual_model, zoo.pooled_cnn, lambda s: zoo.pooled_cnn(s, hidden=8),
                                  zoo.mobilenet_block], ids=["residual", "pooled", "pooled_hidden",
                                                             "mobilenet_block"])
def test_lowering_keeps_the_reference_semantics(make):
    graph = load_onnx(make(1))
    before = [(l.name, [w.copy() for w in l.weights]) for l in graph.layers if isinstance(l, ir.Linear)]
    lowered = _lowered(graph)
    assert not [l for l in lowered.layers if isinstance(l, ir.Add)]
    if make is not _residual_model and make is not zoo.mobilenet_block:   # a pool kept apart,
        assert any(isinstance(l, ir.Linear) and l.pool for l in lowered.layers)  # scale moved
    x = np.random.default_rng(7).normal(0, 1, graph.input.size)
    np.testing.assert_allclose(ir.evaluate_plain(lowered, x), ir.evaluate_plain(graph, x),
                               rtol=1e-9, atol=1e-9)
    after = [(l.name, l.weights) for l in graph.layers if isinstance(l, ir.Linear)]
    assert [n for n, _ in before] == [n for n, _ in after]      # the IR graph itself is unchanged
    for (_, w0), (_, w1) in zip(before, after):
        assert all((a != b).nnz == 0 for a, b in zip(w0, w1))


def test_residual_joins_become_one_multi_input_map():
    graph = load_onnx(_residual_model())
    assert any(isinstance(l, ir.Add) for l in graph.layers)
    lowered = _lowered(graph)
    multi = [l for l in lowered.layers if isinstance(l, ir.Linear) and len(l.inputs) > 1]
    # the join absorbed g2 (s reached twice: the weights add up), then g3 absorbed the join
    assert len(multi) == 1 and sorted(multi[0].inputs) == ["h", "s"]
    assert len(multi[0].geometries) == 2                        # filled per input
    with pytest.raises(ValueError, match="2 inputs"):
        multi[0].W


def test_fuse_linear_composes_a_chain_and_leaves_its_input():
    W1 = sp.csr_matrix(np.arange(12, dtype=float).reshape(4, 3))
    W2 = sp.csr_matrix(np.eye(2, 4) * 2.0)
    layers = [ir.Input("x", [], (1, 3)),
              ir.Linear("l1", ["x"], (1, 4), ["n1"], weights=[W1], bias=np.ones(4)),
              ir.Linear("l2", ["l1"], (1, 2), ["n2"], weights=[W2], bias=np.full(2, 0.5), pool=True)]
    graph = ir.Graph(layers=layers, output="l2", output_shape=(1, 2), input_name="x")
    fused = ir.fuse_linear(graph)
    assert [l.name for l in fused.layers] == ["x", "l2"]
    one = fused.layers[1]
    assert one.inputs == ["x"] and one.sources == ["n1", "n2"] and not one.pool   # no window mean now
    assert graph.layers[2].inputs == ["l1"] and graph.layers[2].pool            # input untouched
    x = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(ir.evaluate_plain(fused, x), ir.evaluate_plain(graph, x))
    np.testing.assert_allclose(ir.evaluate_plain(graph, x).ravel(), W2 @ (W1 @ x + 1) + 0.5)


def test_the_lowering_accepts_multi_input_maps():
    """Multi-input maps are IR too: lowering the lowered residual graph again keeps the
    reference result and starts the compiler's fields afresh."""
    graph = load_onnx(_residual_model(2))
    twice = _lowered(_lowered(graph))
    x = np.random.default_rng(3).normal(0, 1, graph.input.size)
    np.testing.assert_allclose(ir.evaluate_plain(twice, x), ir.evaluate_plain(graph, x),
                               rtol=1e-9, atol=1e-9)
    assert all(l.fused is None for l in twice.layers if isinstance(l, ir.Linear))


def test_a_pool_stays_a_pool_through_an_identity_only():
    """x*x -> a one-term Add -> window mean -> dense: the Add (an identity once lowered) folded
    into the pool leaves it a pool the planner may still run as a rotate-and-add sum."""
    mean = sp.csr_matrix(np.kron(np.eye(2), [[0.5, 0.5]]))
    dense = sp.csr_matrix(np.arange(6, dtype=float).reshape(3, 2))
    layers = [ir.Input("x", [], (1, 4)), ir.Square("s", ["x"], (1, 4)),
              ir.Add("t", ["s"], (1, 4)),
              ir.Linear("p", ["t"], (1, 2), weights=[mean], bias=np.zeros(2), pool=True),
              ir.Linear("y", ["p"], (1, 3), weights=[dense], bias=np.ones(3))]
    graph = ir.Graph(layers=layers, output="y", output_shape=(1, 3), input_name="x")
    lowered = _lowered(graph)
    pools = [l for l in lowered.layers if isinstance(l, ir.Linear) and l.pool]
    assert len(pools) == 1 and pools[0].inputs == ["s"] and pools[0].fused is not None
    x = np.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(ir.evaluate_plain(lowered, x), ir.evaluate_plain(graph, x))
    layers[2] = ir.Linear("t", ["s"], (1, 4), weights=[sp.identity(4, format="csr") * 2.0],
                          bias=np.zeros(4))                          # not an identity: no pool
    assert not [l for l in _lowered(graph).layers if isinstance(l, ir.Linear) and l.pool]
