"""A JSON value of another type than a given one: what the plan-reading tests put in a field to
check that the gateway refuses it by name (tests/engine/test_plan_steps.py, tests/formats/)."""
from __future__ import annotations


def other_json_type(value):
    # bool first: Python's True == 1, so a bool field must also refuse the number 1
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return "7"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"0": value}
    return [value] if value is not None else "null"
