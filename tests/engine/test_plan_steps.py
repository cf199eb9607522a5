"""Typed plan steps (runtime/steps.py): every zoo model's plan reads into typed steps and back to
exactly the JSON the compiler wrote, and a step with a missing, extra or ill-typed field - at the
top or nested - is refused with a message naming the step index, its kind and the field."""
from __future__ import annotations

import copy
import json
import re

import pytest

from protected_nn import zoo
from protected_nn.compiler.planner import compile_graph
from protected_nn.errors import BundleError
from protected_nn.frontend import load_onnx
from protected_nn.runtime.evaluator import Evaluator
from protected_nn.runtime.steps import STEP_TYPES, check_references, parse_steps
from tests.support.json_values import other_json_type

BUILDERS = dict(zoo.ENGINE_MODELS) | {
    "tenseal_cnn": zoo.tenseal_cnn, "cryptonets": zoo.cryptonets,
    "engine_test_cnn_s1": lambda s: zoo.engine_test_cnn(s), "engine_test_cnn_s2": lambda s: zoo.engine_test_cnn(s + 1),
    "random_cnn_mixed": lambda s: zoo.random_cnn(s, activation="mixed"),
    "random_cnn_relu": lambda s: zoo.random_cnn(s + 3, activation="relu")}


@pytest.fixture(scope="module")
def plans() -> dict[str, dict]:
    """The plan documents as a gateway reads them (through JSON)."""
    out = {}
    for name, build in BUILDERS.items():
        graph = load_onnx(build(0), calibration=None, poly_degree=4, input_range=(0.0, 1.0),
                          calibration_samples=4)
        out[name] = json.loads(json.dumps(compile_graph(graph, 8).doc))
    return out


@pytest.fixture(scope="module")
def samples(plans) -> dict[str, tuple[int, dict]]:
    """(index, step) of the first step of each kind found in the zoo's plans."""
    found = {}
    for doc in plans.values():
        for i, st in enumerate(doc["steps"]):
            found.setdefault(st["op"], (i, st))
    return found


def test_every_zoo_plan_round_trips(plans):
    for name, doc in plans.items():
        steps = parse_steps(doc["steps"])
        assert [s.to_dict() for s in steps] == doc["steps"], name
        assert all(type(s) is STEP_TYPES[d["op"]] for s, d in zip(steps, doc["steps"]))
        check_references(steps, None if doc["input"]["free"] else doc["input"]["name"],
                         len(doc["weights"]), doc["output"]["src"], doc["input"]["num_cts"])


def test_the_zoo_exercises_every_step_kind(samples):
    """The refusal tests below take a real step of each kind: all kinds must be among them."""
    assert set(STEP_TYPES) <= set(samples), f"no zoo plan has {set(STEP_TYPES) - set(samples)}"


def _refused(step: dict, index: int, *needles: str) -> str:
    docs = [{"op": "square", "src": "x", "out": f"t{i}", "level": 0} for i in range(index)] + [step]
    with pytest.raises(BundleError) as err:
        parse_steps(docs)
    msg = str(err.value)
    assert f"plan step {index} ({step['op']})" in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.mark.parametrize("kind", sorted(STEP_TYPES))
def test_missing_field_refused(samples, kind):
    index, step = samples[kind]
    optional = STEP_TYPES[kind].OPTIONAL
    for field in [f for f in step if f != "op" and f not in optional]:
        broken = {k: v for k, v in step.items() if k != field}
        _refused(broken, index, f"'{field}'", "missing")


@pytest.mark.parametrize("kind", sorted(STEP_TYPES))
def test_extra_field_refused(samples, kind):
    index, step = samples[kind]
    _refused(dict(step, teleport=1), index, "'teleport'", "not a field")


def _leaves(value, path=""):
    """The path ('giants[0].terms[1][0]') of every scalar under `value`."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path


def _parts(path: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]", path) if p != ""]


def _at(doc, path: str):
    for p in _parts(path):
        doc = doc[p]
    return doc


def _set(doc, path: str, new) -> None:
    *head, last = _parts(path)
    for p in head:
        doc = doc[p]
    doc[last] = new


@pytest.mark.parametrize("kind", sorted(STEP_TYPES))
def test_ill_typed_field_refused(samples, kind):
    """Each top-level field, and the first scalar nested in each, replaced by a value of the
    wrong JSON type: refused, naming the field's path."""
    index, step = samples[kind]
    for field in [f for f in step if f != "op"]:
        _refused(dict(step, **{field: other_json_type(step[field])}), index, f"'{field}'")
        leaves = [p for p in _leaves({field: step[field]}) if p != field]
        if leaves:
            broken = copy.deepcopy(step)
            leaf = leaves[0]
            _set(broken, leaf, other_json_type(_at(step, leaf)))
            _refused(broken, index, f"'{leaf}'")


def test_negative_index_and_bad_layout_refused(samples):
    index, step = samples["square"]
    _refused(dict(step, level=-1), index, "'level'", "negative")
    index, step = samples["linear"]
    _refused(dict(step, layout=dict(step["layout"], period=0)), index, "'layout'", "non-zero")
    _refused(dict(step, layout=dict(step["layout"], extra=1)), index, "'layout'", "exactly the keys")


def test_version_1_square_with_layout_reads():
    """Version-1 plans wrote the layout on square steps; they still read, and round-trip."""
    doc = {"op": "square", "src": "a", "out": "b", "level": 1,
           "layout": {"n": 4, "unit": 1, "period": 8, "zero_padded": True}}
    assert parse_steps([doc])[0].to_dict() == doc


def test_unknown_kind_and_non_object_refused():
    with pytest.raises(BundleError, match="step kinds .* teleport"):
        parse_steps([{"op": "teleport"}])
    with pytest.raises(BundleError, match="step kinds .* None"):
        parse_steps([["square"]])
    with pytest.raises(BundleError, match="steps must be a list"):
        parse_steps({"op": "square"})


def test_dangling_references_refused(plans):
    doc = copy.deepcopy(plans["tenseal_cnn"])
    inp = None if doc["input"]["free"] else doc["input"]["name"]
    steps = doc["steps"]
    reader = next(i for i, s in enumerate(steps) if "src" in s or "inputs" in s)
    broken = copy.deepcopy(steps)
    if "src" in broken[reader]:
        broken[reader]["src"] = "nowhere"
    else:
        broken[reader]["inputs"][0]["src"] = "nowhere"
    with pytest.raises(BundleError, match=rf"plan step {reader} .*'nowhere'"):
        check_references(parse_steps(broken), inp, len(doc["weights"]), doc["output"]["src"], 1)
    with pytest.raises(BundleError, match="weight index .* out of range"):
        check_references(parse_steps(steps), inp, 1, doc["output"]["src"], 1)
    with pytest.raises(BundleError, match="output 'ghost'"):
        check_references(parse_steps(steps), inp, len(doc["weights"]), "ghost", 1)


def test_evaluator_refuses_malformed_step_before_running(plans):
    """The gateway's entry point: a malformed step is a BundleError, not a KeyError, before any
    key or ciphertext is touched (ckks=None would fail on first use)."""
    doc = copy.deepcopy(plans["tenseal_cnn"])
    del doc["steps"][-1]["bias"]
    with pytest.raises(BundleError, match=rf"plan step {len(doc['steps']) - 1} .*'bias' is missing"):
        Evaluator(doc, None, [])


@pytest.mark.parametrize("kind,path,value,needle", [
    ("linear", "babies[0][0]", 99, "names source 99"),
    ("linear", "babies[0][1]", 5, "earlier baby"),
    ("linear", "giants[0].terms[0][0]", 10**6, "names baby"),
    ("mlinear", "sources[0][0]", 99, "names input 99"),
    ("mlinear", "outs[0].giants[0].terms[0][0]", 10**6, "names baby"),
    ("gather_linear", "outs[0].rows[0]", 10**6, "names frame row"),
    ("poly", "recipe[0][1]", 9, "not computed before"),
    ("poly", "terms[0][0]", 9, "does not compute")])
def test_index_out_of_range_refused(plans, kind, path, value, needle):
    """Indices between a step's own lists: refused by the check the evaluator runs first."""
    name, index = next((n, i) for n, doc in plans.items() for i, st in enumerate(doc["steps"])
                       if st["op"] == kind)
    doc = copy.deepcopy(plans[name])
    _set(doc["steps"][index], path, value)
    inp = None if doc["input"]["free"] else doc["input"]["name"]
    with pytest.raises(BundleError, match=re.escape(f"plan step {index} ({kind}): field '{path}'")
                       + ".*" + needle):
        check_references(parse_steps(doc["steps"]), inp, len(doc["weights"]), doc["output"]["src"],
                         doc["input"]["num_cts"])
