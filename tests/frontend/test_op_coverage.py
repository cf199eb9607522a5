"""Every op in the frontend's op table has at least one case in tests/support/op_cases.py (which every
backend's tests run), and every case exercises the op it is filed under."""
from __future__ import annotations

from protected_nn.frontend import OP_TABLE
from tests.support.op_cases import CASES, OP_CASES


def test_every_registered_op_has_a_test_case():
    missing = sorted(set(OP_TABLE) - set(OP_CASES))
    assert not missing, f"ops in OP_TABLE without a case in tests/support/op_cases.py: {missing}"


def test_every_case_is_for_a_registered_op():
    stale = sorted(set(OP_CASES) - set(OP_TABLE))
    assert not stale, f"cases for ops that are not in OP_TABLE: {stale}"


def test_every_case_model_contains_its_op():
    for case in CASES:
        model, _ = case.build()
        ops = {node.op_type for node in model.graph.node}
        assert case.op in ops, f"case {case.id} has no {case.op} node (ops: {sorted(ops)})"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
