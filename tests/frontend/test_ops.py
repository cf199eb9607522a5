"""Every op case of tests/support/op_cases.py: load_onnx + ir.evaluate_plain vs onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from protected_nn import ir
from protected_nn.frontend import load_onnx
from tests.support.op_cases import CASES, run_onnxruntime

EXACT_ATOL = 1e-5


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_case_matches_onnxruntime(case):
    model, x = case.build()
    graph = load_onnx(model, calibration=x)
    oracle = case.reference() if case.reference else model
    expected = run_onnxruntime(oracle, x)
    got = ir.evaluate_plain(graph, x)
    assert got.shape == expected.shape == tuple(graph.output_shape)
    if case.approximate:
        polys = [l for l in graph.layers if isinstance(l, ir.Poly)]
        assert len(polys) == 1 and polys[0].op == case.op
        p = polys[0]
        assert p.fit_range[0] <= float(x.min()) and float(x.max()) <= p.fit_range[1]
        tol = 1.01 * p.fit_max_error + 1e-5
        assert np.max(np.abs(got - expected)) <= tol
        # the fit is meaningful, not a constant: error well below the function's own spread
        assert p.fit_max_error < 0.2 * (np.max(expected) - np.min(expected))
    else:
        np.testing.assert_allclose(got, expected, atol=EXACT_ATOL, rtol=1e-5)
    if case.reference:   # the approximation is announced
        assert any(case.op in w for w in graph.warnings)
