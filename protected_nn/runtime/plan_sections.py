"""The whole plan, typed: its steps (runtime/steps.py) and its other sections - `ckks` (ring
degree, primes, scale), `input` (what the gateway lays out or encrypts: shape, gather map),
`output` (which slots the owner decodes), `weights` (the index of the encrypted parameters),
`rotation_steps` (the Galois keys the bundle must hold) and `version`.

`read_plan` reads a plan's JSON once into a `PlanDoc`: the version first, then the steps, then
every section with every field checked, then what ties them together (here: the gather map and
the output decoding within the ring, levels within the modulus chain; plan_links.py for the
steps: each rotation a step does on a ciphertext has a key, layouts within the ring, every tensor
and weight a step names exists). A malformed or hostile plan is refused with the section (or
step) and field named, before any key or ciphertext is parsed. The format on disk is unchanged: `to_dict` gives back exactly the JSON the compiler
wrote, so old bundles load as they are and no plan version is added."""
from __future__ import annotations

import binascii
import json
import math
from dataclasses import dataclass, field

import numpy as np

from protected_nn.ckks.params import MAX_PRIME_BITS, CkksParams, check_128_bit
from protected_nn.errors import BundleError, PlanError
from protected_nn.runtime import steps as S
from protected_nn.runtime.plan_format import check_version, decode_array
from protected_nn.runtime.plan_links import check_layout, check_steps
from protected_nn.runtime.steps import (_Record, _bool, _count, _float, _int, _layout, _list, _str,
                                        _type_name)

SECTIONS = ("version", "ckks", "input", "steps", "rotation_steps", "output", "weights")
WEIGHT_KINDS = ("weight", "bias")


class _InSection:
    """The section being read, for error messages (the counterpart of steps._Where)."""
    NOUN = "section"

    def __init__(self, name: str):
        self.name = name

    def fail(self, path: str, problem: str):
        raise BundleError(f"plan section '{self.name}': field '{path}' {problem}")


def _positive(v, w, path: str) -> int:
    if _int(v, w, path) < 1:
        w.fail(path, f"must be at least 1 ({v})")
    return v


def _text(v, w, path: str) -> str:
    """A label (a layer name): any string, empty included."""
    if not isinstance(v, str):
        w.fail(path, f"must be a string, not {_type_name(v)}")
    return v


def _decimal(v, w, path: str) -> str:
    """A big integer written as a decimal string (JSON numbers lose precision beyond 2^53)."""
    if not isinstance(v, str) or not v.isdigit() or not v.isascii() or len(v) > 20:
        w.fail(path, f"must be a decimal integer string of at most 20 digits, not {v!r:.40}")
    return v


def _finite_positive(v, w, path: str) -> float:
    if not math.isfinite(_float(v, w, path)) or v <= 0:
        w.fail(path, f"must be a finite number above 0, not {v!r}")
    return v


def _weight_kind(v, w, path: str) -> str:
    if v not in WEIGHT_KINDS:
        w.fail(path, f"must be one of {', '.join(WEIGHT_KINDS)}, not {v!r}")
    return v


@dataclass(frozen=True)
class CkksSection(_Record):
    """Ring degree `n`, prime sizes (first prime, one per level, special prime last), scale
    2^scale_bits = `delta`, and SEAL's exact primes for those sizes."""
    n: int
    qi_sizes: tuple
    scale_bits: int
    primes: tuple
    delta: float
    SPEC = {"n": _count, "qi_sizes": _list(_count), "scale_bits": _count, "primes": _list(_decimal),
            "delta": _float}

    @property
    def params(self) -> CkksParams:
        return CkksParams(n=self.n, qi_sizes=tuple(self.qi_sizes), scale_bits=self.scale_bits)

    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def depth(self) -> int:
        """Rescales the chain allows: a result at level `depth` keeps only the first prime."""
        return self.params.depth

    @property
    def result_bits(self) -> int:
        return self.qi_sizes[0]

    @property
    def first_prime(self) -> int:
        return int(self.primes[0])

    def check(self, w: _InSection) -> None:
        if len(self.qi_sizes) < 2:
            w.fail("qi_sizes", "must list at least a data prime and the special prime")
        if not 1 <= self.scale_bits <= MAX_PRIME_BITS:
            w.fail("scale_bits", f"must be between 1 and {MAX_PRIME_BITS}, not {self.scale_bits}")
        try:
            check_128_bit(self.params)
        except PlanError as exc:
            w.fail("n", f"and 'qi_sizes' are not a 128-bit secure parameter set: {exc}")
        if len(self.primes) != len(self.qi_sizes):
            w.fail("primes", f"has {len(self.primes)} entries for {len(self.qi_sizes)} prime sizes")
        for i, (p, bits) in enumerate(zip(self.primes, self.qi_sizes)):
            q = int(p)
            if q.bit_length() != bits or q % (2 * self.n) != 1:
                w.fail(f"primes[{i}]", f"({p}) is not a {bits}-bit prime = 1 mod 2n")
        if self.delta != 2.0 ** self.scale_bits:
            w.fail("delta", f"must be 2^scale_bits = {2.0 ** self.scale_bits:g}, not {self.delta!r}")


@dataclass(frozen=True)
class InputSection(_Record):
    """The frame as the gateway hands it to the first step: `gather` maps every slot of each of
    `num_cts` vectors to a frame index (-1: zero); `free` = the first step reads these vectors
    itself (else they are the tensor `name`); `plain` = they stay in clear (absent before the
    clear-frame first layer: encrypted). `layout`: single-ciphertext plans, for reports."""
    name: str
    shape: tuple
    size: int
    free: bool
    gather: str
    num_cts: int
    layout: dict | None = None
    plain: bool | None = None
    SPEC = {"name": _str, "shape": _list(_positive), "size": _positive, "free": _bool,
            "gather": _str, "num_cts": _positive, "layout": _layout, "plain": _bool}
    OPTIONAL = frozenset({"layout", "plain"})

    def check(self, w: _InSection) -> None:
        if not self.shape:
            w.fail("shape", "must not be empty")
        if math.prod(self.shape) != self.size:
            w.fail("size", f"({self.size}) is not the number of values of the shape {list(self.shape)}")

    def gather_rows(self, slots: int, w: _InSection) -> np.ndarray:
        try:
            rows = decode_array(self.gather, (self.num_cts, slots))
        except (binascii.Error, ValueError):
            w.fail("gather", f"is not {self.num_cts} x {slots} packed integers (num_cts x slots)")
        lo, hi = int(rows.min()), int(rows.max())
        if lo < -1 or hi >= self.size:
            bad = lo if lo < -1 else hi
            w.fail("gather", f"names frame index {bad}, outside -1..{self.size - 1}")
        return rows


@dataclass(frozen=True)
class OutputSection(_Record):
    """The result: tensor `src` at `level` and `scale`, its values at the slots of `layout`
    (index j at slot j x unit), reshaped to `shape`."""
    src: str
    layout: dict
    level: int
    shape: tuple
    scale: float
    SPEC = {"src": _str, "layout": _layout, "level": _count, "shape": _list(_positive),
            "scale": _finite_positive}

    def value_slots(self) -> np.ndarray:
        return np.arange(self.layout["n"], dtype=np.int64) * self.layout["unit"]

    def padding_slots(self, slots: int) -> np.ndarray:
        """Slots a zero-padded layout holds at exactly zero (unit multiples past the values, in
        every copy); none when the layout is not zero-padded."""
        lay = self.layout
        if not lay["zero_padded"]:
            return np.zeros(0, dtype=np.int64)
        per_copy = np.arange(lay["n"], lay["period"] // lay["unit"], dtype=np.int64) * lay["unit"]
        copies = np.arange(0, slots, lay["period"], dtype=np.int64)
        return (copies[:, None] + per_copy[None, :]).reshape(-1)

    def check(self, w: _InSection, ckks: CkksSection) -> None:
        if math.prod(self.shape) != self.layout["n"]:
            w.fail("shape", f"{list(self.shape)} does not hold the layout's {self.layout['n']} values")
        check_layout(self.layout, ckks.slots, w, "layout")
        if self.level > ckks.depth:
            w.fail("level", f"({self.level}) is beyond the modulus chain's {ckks.depth} levels")
        if math.log2(self.scale) >= ckks.result_bits:
            w.fail("scale", f"(2^{math.log2(self.scale):.1f}) does not fit the result's "
                            f"{ckks.result_bits}-bit prime")


@dataclass(frozen=True)
class WeightEntry(_Record):
    """One encrypted parameter vector: the level and scale it is encrypted at, for the report
    which layer it belongs to and whether it is a weight or a bias."""
    level: int
    scale: float
    layer: str
    kind: str
    SPEC = {"level": _count, "scale": _finite_positive, "layer": _text, "kind": _weight_kind}


@dataclass(frozen=True)
class PlanDoc:
    """A plan as the gateway and the owner's decoder read it: every section typed and checked."""
    version: int
    ckks: CkksSection
    input: InputSection
    steps: tuple
    rotation_steps: tuple
    output: OutputSection
    weights: tuple
    gather: np.ndarray = field(compare=False, repr=False)   # input.gather decoded (num_cts x slots)

    @property
    def slots(self) -> int:
        return self.ckks.slots

    @property
    def plain_input(self) -> bool:
        """The gateway holds the frame in clear: the first layer multiplies encrypted weights by
        plaintexts (no input encryption, no relinearization, input rotations done in numpy)."""
        return bool(self.input.plain)

    @property
    def input_tensor(self) -> str | None:
        """The name steps read the laid-out frame by; None when the first step reads it itself."""
        return None if self.input.free else self.input.name

    def to_dict(self) -> dict:
        return {"version": self.version, "ckks": self.ckks.to_dict(), "input": self.input.to_dict(),
                "steps": [st.to_dict() for st in self.steps],
                "rotation_steps": list(self.rotation_steps), "output": self.output.to_dict(),
                "weights": [wt.to_dict() for wt in self.weights]}


def read_plan(data) -> PlanDoc:
    """A plan from its JSON bytes (a bundle member) or an already decoded document."""
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            data = json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"the plan is not valid JSON: {exc}") from None
    return parse_plan(data)


def parse_plan(doc) -> PlanDoc:
    if not isinstance(doc, dict):
        raise BundleError(f"the plan must be a JSON object, not {_type_name(doc)}")
    check_version(doc)                      # decides what the rest means: first
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise BundleError(f"the plan has sections this software does not know: {', '.join(unknown)}")
    steps = S.parse_steps(doc["steps"]) if "steps" in doc else None
    missing = [s for s in SECTIONS if s not in doc]
    if missing:
        raise BundleError(f"the plan lacks the section(s) {', '.join(missing)}: truncated, or not "
                          f"written by protect")
    ckks = _section(CkksSection, doc, "ckks")
    slots = ckks.slots
    inp = _section(InputSection, doc, "input")
    out = _section(OutputSection, doc, "output", ckks)
    w = _InSection("input")
    check_layout(inp.layout, slots, w, "layout")
    gather = inp.gather_rows(slots, w)
    rotations = _rotations(doc["rotation_steps"], slots)
    weights = _weights(doc["weights"], ckks.depth)
    plan = PlanDoc(version=doc["version"], ckks=ckks, input=inp, steps=tuple(steps),
                   rotation_steps=tuple(rotations), output=out, weights=weights, gather=gather)
    check_steps(plan)
    return plan


def _section(cls, doc: dict, name: str, *context):
    w = _InSection(name)
    value = doc[name]
    if not isinstance(value, dict):
        raise BundleError(f"plan section '{name}' must be an object, not {_type_name(value)}")
    sec = cls.parse(value, w)
    sec.check(w, *context)
    return sec


def _listed(docs, name: str) -> list:
    if not isinstance(docs, list):
        raise BundleError(f"plan section '{name}' must be a list, not {_type_name(docs)}")
    return docs


def _rotations(docs, slots: int) -> tuple:
    w = _InSection("rotation_steps")
    out = []
    for i, k in enumerate(_listed(docs, "rotation_steps")):
        if not -slots < _int(k, w, f"[{i}]") < slots:
            w.fail(f"[{i}]", f"({k}) is not a rotation of {slots} slots")
        out.append(k)
    return tuple(out)


_WEIGHT_FIELDS = frozenset(WeightEntry.SPEC)


def _plain_weight(d) -> WeightEntry | None:
    """The usual entry, read without the per-field parsers (they were a quarter of a large plan's
    load): it accepts only what they accept; anything else goes through them, to be accepted or
    refused with its field named."""
    if (type(d) is dict and d.keys() == _WEIGHT_FIELDS and type(d["level"]) is int and d["level"] >= 0
            and type(d["scale"]) is float and 0.0 < d["scale"] < math.inf and type(d["layer"]) is str
            and d["kind"] in WEIGHT_KINDS):
        return WeightEntry(level=d["level"], scale=d["scale"], layer=d["layer"], kind=d["kind"])
    return None


def _weights(docs, depth: int) -> tuple:
    w = _InSection("weights")
    docs = _listed(docs, "weights")
    out = []
    for i, d in enumerate(docs):
        entry = _plain_weight(d) or WeightEntry.parse(d, w, f"[{i}]")
        if entry.level > depth:
            w.fail(f"[{i}].level", f"({entry.level}) is beyond the modulus chain's {depth} levels")
        out.append(entry)
    return tuple(out)
