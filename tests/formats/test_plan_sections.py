"""The plan's sections typed (runtime/plan_sections.py): plans written by main before this change
read into typed sections and back to exactly their JSON (the format on disk is unchanged), and a
plan with a missing or unknown section, a missing, extra or ill-typed field, an unknown version,
a rotation its Galois keys do not cover, an output decoding beyond the ring, a gather map or a
level out of range is refused naming the section (or step) and the field - before any key or
ciphertext is parsed (EdgeModel with empty key bytes gets the plan's error, not SEAL's)."""
from __future__ import annotations

import base64
import copy
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from protected_nn.artifacts import MEMBERS, ModelArtifacts
from protected_nn.errors import BundleError
from protected_nn.runtime import steps as S
from protected_nn.runtime.plan_links import STEP_RULES, field_path
from protected_nn.runtime.plan_sections import (SECTIONS, CkksSection, InputSection, OutputSection,
                                                PlanDoc, WeightEntry, parse_plan, read_plan)
from tests.support.json_values import other_json_type

PLANS = Path(__file__).parent / "plans"
# Written by `protect` at main 7e2162f (plan version 3): TenSEAL's tutorial CNN (first_linear,
# square, linear), a random CNN (gather_linear, mlinear, square, poly) and the tests' frame model
# (tests/support/tiny_models.py; the plan of tests/support/fake_models.py).
FIXTURES = sorted(PLANS.glob("main-*.json.gz"))
MAIN_KINDS = {"first_linear", "gather_linear", "linear", "mlinear", "square", "poly"}   # at 7e2162f
SECTION_TYPES = {"ckks": CkksSection, "input": InputSection, "output": OutputSection}


def _load(name: str) -> dict:
    return json.loads(gzip.decompress((PLANS / f"main-7e2162f-{name}.json.gz").read_bytes()))


@pytest.fixture(params=["tenseal-cnn", "random-cnn-mixed"])
def doc(request) -> dict:
    return _load(request.param)


def _refused(doc, *needles: str) -> str:
    with pytest.raises(BundleError) as err:
        parse_plan(doc)
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_plans_written_by_main_read_and_round_trip():
    assert len(FIXTURES) == 3
    kinds = set()
    for path in FIXTURES:
        raw = gzip.decompress(path.read_bytes())
        plan = read_plan(raw)
        assert isinstance(plan, PlanDoc) and plan.to_dict() == json.loads(raw), path.name
        assert isinstance(plan.ckks, CkksSection) and isinstance(plan.output, OutputSection)
        assert all(isinstance(w, WeightEntry) for w in plan.weights)
        assert plan.gather.shape == (plan.input.num_cts, plan.slots)
        kinds |= {st.KIND for st in plan.steps}
    assert kinds == MAIN_KINDS <= set(S.STEP_TYPES), "the fixtures hold every kind main wrote"


def test_older_plans_read(doc):
    """Version 1 and 2 plans had no `input.plain` (the frame was encrypted) and version 1 wrote
    layouts on square steps: they read, keep the frame encrypted, and round-trip."""
    old = copy.deepcopy(doc)
    old["version"] = 1
    del old["input"]["plain"]
    for st in old["steps"]:
        if st["op"] == "square":
            st["layout"] = dict(old["output"]["layout"])
    plan = parse_plan(old)
    assert plan.plain_input is False and plan.to_dict() == old


@pytest.mark.parametrize("version", [99, 0, True, "3", None, 3.0])
def test_unknown_version_refused(doc, version):
    doc["version"] = version
    _refused(doc, f"plan version {version!r} is not one this gateway knows", "update the gateway")


@pytest.mark.parametrize("section", [s for s in SECTIONS if s != "version"])
def test_missing_section_refused(doc, section):
    del doc[section]
    _refused(doc, "lacks the section(s)", section)


def test_unknown_section_and_non_object_refused(doc):
    _refused(dict(doc, teleport={}), "sections this software does not know: teleport")
    with pytest.raises(BundleError, match="must be a JSON object"):
        parse_plan([doc])
    with pytest.raises(BundleError, match="not valid JSON"):
        read_plan(b"{\"version\": 3,")
    for name in SECTION_TYPES:
        _refused(dict(doc, **{name: [1]}), f"plan section '{name}' must be an object, not list")


@pytest.mark.parametrize("name", sorted(SECTION_TYPES))
def test_section_fields_missing_extra_or_ill_typed_refused(doc, name):
    cls = SECTION_TYPES[name]
    section = doc[name]
    for field in section:
        where = f"plan section '{name}': field '{field}'"
        if field not in cls.OPTIONAL:
            _refused(dict(doc, **{name: {k: v for k, v in section.items() if k != field}}), where, "missing")
        _refused(dict(doc, **{name: dict(section, **{field: other_json_type(section[field])})}), where)
    _refused(dict(doc, **{name: dict(section, teleport=1)}), f"plan section '{name}': field 'teleport'",
             "not a field of this section")


def test_weights_and_rotation_steps_typed(doc):
    broken = copy.deepcopy(doc)
    broken["weights"][2]["kind"] = "gain"
    _refused(broken, "plan section 'weights': field '[2].kind'", "weight, bias")
    broken = copy.deepcopy(doc)
    del broken["weights"][1]["scale"]
    _refused(broken, "field '[1].scale' is missing")
    broken["weights"] = {"0": doc["weights"]}
    _refused(broken, "plan section 'weights' must be a list")
    _refused(dict(doc, rotation_steps=doc["rotation_steps"] + [1.5]), "plan section 'rotation_steps'",
             "must be an integer")
    slots = doc["ckks"]["n"] // 2
    _refused(dict(doc, rotation_steps=doc["rotation_steps"] + [slots]), f"({slots}) is not a rotation")


def test_weight_entries_read_alike_by_the_quick_and_the_field_parsers(doc):
    """Usual entries skip the per-field parsers (plan_sections._plain_weight); the result is the
    same, and an unusual but valid entry (an integer scale) or a bad one still goes through them."""
    from protected_nn.runtime.plan_sections import _InSection
    slow = tuple(WeightEntry.parse(d, _InSection("weights"), f"[{i}]") for i, d in enumerate(doc["weights"]))
    assert parse_plan(doc).weights == slow
    doc["weights"][0]["scale"] = 4
    assert parse_plan(doc).weights[0].scale == 4
    doc["weights"][0]["level"] = -1
    _refused(doc, "field '[0].level' must not be negative")


def _ciphertext_rotation(plan: PlanDoc):
    """(step index, kind, field, amount) of the first rotation a step does on a ciphertext."""
    for i, st in enumerate(plan.steps):
        for parts, k in STEP_RULES[type(st)].rotations(st, None):
            if k % plan.slots:
                return i, st.KIND, field_path(parts), k
    raise AssertionError("the plan rotates nothing")


def test_rotation_without_a_galois_key_refused(doc):
    plan = parse_plan(doc)
    i, kind, path, k = _ciphertext_rotation(plan)
    slots = plan.slots
    doc["rotation_steps"] = [r for r in doc["rotation_steps"] if r % slots != k % slots]
    _refused(doc, f"plan step {i} ({kind}): field '{path}' rotates by {k}", "Galois keys")


def test_baby_rotations_of_a_clear_frame_need_no_key():
    """Babies of the frame the gateway holds in clear are rotated in numpy (evaluator._mlinear):
    only the rotations on ciphertexts (giant steps, the tree) need keys."""
    plan = parse_plan(_load("random-cnn-mixed"))
    st = next(s for s in plan.steps if isinstance(s, S.MappedLinear) and any(b[2] for b in s.babies))
    src = st.inputs[0].src
    on_ciphertexts = [field_path(p) for p, _ in STEP_RULES[S.MappedLinear].rotations(st, None)]
    on_frame = [field_path(p) for p, _ in STEP_RULES[S.MappedLinear].rotations(st, src)]
    from_frame = {j for j, (s, built, _) in enumerate(st.babies) if st.sources[s][0] == 0}
    assert from_frame and any(p.startswith("babies") for p in on_ciphertexts)
    assert not any(p.startswith(f"babies[{j}]") for p in on_frame for j in from_frame)
    assert [p for p in on_ciphertexts if not p.startswith("babies")] == \
           [p for p in on_frame if not p.startswith("babies")]


def test_output_decoding_beyond_the_ring_refused(doc):
    slots = doc["ckks"]["n"] // 2
    lay = doc["output"]["layout"]
    broken = copy.deepcopy(doc)
    broken["output"]["layout"] = dict(lay, unit=slots)
    _refused(broken, "plan section 'output': field 'layout'", f"at slot {(lay['n'] - 1) * slots}")
    broken["output"]["layout"] = dict(lay, period=2 * slots, unit=1)
    _refused(broken, "field 'layout' has a period", f"does not divide the ring's {slots}")
    broken["output"]["layout"] = lay
    broken["output"]["shape"] = [1, lay["n"] + 1]
    _refused(broken, "field 'shape'", f"the layout's {lay['n']} values")


def test_gather_map_checked_against_the_ring_and_the_frame(doc):
    slots, inp = doc["ckks"]["n"] // 2, doc["input"]
    broken = copy.deepcopy(doc)
    broken["input"]["gather"] = inp["gather"][:-8]
    _refused(broken, "plan section 'input': field 'gather'", f"{inp['num_cts']} x {slots}")
    rows = np.full((inp["num_cts"], slots), -1, "<i4")
    rows[-1, -1] = inp["size"]
    broken["input"]["gather"] = base64.b64encode(rows.tobytes()).decode()
    _refused(broken, "field 'gather' names frame index", f"-1..{inp['size'] - 1}")
    broken["input"] = dict(inp, size=inp["size"] + 1)
    _refused(broken, "field 'size'", "shape")
    if "layout" in inp:                       # single-ciphertext plans
        broken["input"] = dict(inp, layout=dict(inp["layout"], period=2 * slots))
        _refused(broken, "plan section 'input': field 'layout'", "does not divide")


def test_levels_beyond_the_chain_refused(doc):
    depth = len(doc["ckks"]["qi_sizes"]) - 2
    for section, path in (("output", "level"), ("weights", "[0].level")):
        broken = copy.deepcopy(doc)
        target = broken["output"] if section == "output" else broken["weights"][0]
        target["level"] = depth + 1
        _refused(broken, f"plan section '{section}': field '{path}'", "beyond the modulus chain")
    broken = copy.deepcopy(doc)
    i = next(i for i, st in enumerate(broken["steps"]) if st["op"] == "square")
    broken["steps"][i]["level"] = depth
    _refused(broken, f"plan step {i} (square): field 'level'", "leaves no prime")


def test_ckks_parameters_checked(doc):
    ckks = doc["ckks"]
    wrong_prime = str(int(ckks["primes"][0]) + 2)
    _refused(dict(doc, ckks=dict(ckks, primes=[wrong_prime] + ckks["primes"][1:])), "field 'primes[0]'")
    _refused(dict(doc, ckks=dict(ckks, primes=ckks["primes"][:-1])), "field 'primes'", "entries")
    _refused(dict(doc, ckks=dict(ckks, qi_sizes=[60] * len(ckks["qi_sizes"]))), "128-bit")
    _refused(dict(doc, ckks=dict(ckks, delta=ckks["delta"] * 2)), "field 'delta'", "2^scale_bits")
    _refused(dict(doc, ckks=dict(ckks, scale_bits=4000)), "field 'scale_bits'", "between 1 and 60")


def test_a_non_mapped_step_reading_the_clear_frame_refused():
    doc = _load("random-cnn-mixed")
    doc["input"]["free"] = False
    i = next(i for i, st in enumerate(doc["steps"]) if st["op"] == "square")
    doc["steps"][i]["src"] = doc["input"]["name"]
    _refused(doc, f"plan step {i} (square): reads the frame '{doc['input']['name']}'", "in clear")


def test_edge_model_refuses_a_bad_plan_before_any_key_is_parsed():
    """Key members are empty: had the plan passed, SEAL would have failed on them instead."""
    from protected_nn.api import EdgeModel
    doc = _load("tenseal-cnn")
    doc["output"]["layout"]["unit"] = 10**6
    members = {m: b"" for m in MEMBERS} | {"plan": json.dumps(doc).encode()}
    with pytest.raises(BundleError, match="plan section 'output': field 'layout'"):
        EdgeModel(ModelArtifacts(**members))
