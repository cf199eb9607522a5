"""Typed plan steps: one frozen dataclass per step kind, read from the plan's JSON with every
field checked, so a malformed or hostile bundle is refused with the step index, kind and field
instead of failing halfway through an inference with a KeyError or TypeError.

The wire format is unchanged (the compiler writes plain dicts; `to_dict` gives them back exactly):
typing is the gateway's reading of the plan, not a new version of it. Fields the evaluator does
not use (an output layout kept for reports) are still checked and kept, so a plan round-trips."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

from protected_nn.errors import BundleError


class _Where:
    """The step being read, for error messages (plan_sections.py has the same for a section)."""
    NOUN = "step kind"

    def __init__(self, index: int, kind: str):
        self.index, self.kind = index, kind

    def fail(self, path: str, problem: str):
        raise BundleError(f"plan step {self.index} ({self.kind}): field '{path}' {problem}")


def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _int(v, w: _Where, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        w.fail(path, f"must be an integer, not {_type_name(v)}")
    return v


def _count(v, w: _Where, path: str) -> int:
    """An index or a level: a non-negative integer."""
    if _int(v, w, path) < 0:
        w.fail(path, f"must not be negative ({v})")
    return v


def _float(v, w: _Where, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        w.fail(path, f"must be a number, not {_type_name(v)}")
    return v


def _bool(v, w: _Where, path: str) -> bool:
    if not isinstance(v, bool):
        w.fail(path, f"must be true or false, not {_type_name(v)}")
    return v


def _str(v, w: _Where, path: str) -> str:
    if not isinstance(v, str) or not v:
        w.fail(path, f"must be a non-empty string, not {_type_name(v)}")
    return v


def _list(item: Callable) -> Callable:
    def parse(v, w: _Where, path: str) -> tuple:
        if not isinstance(v, list):
            w.fail(path, f"must be a list, not {_type_name(v)}")
        return tuple(item(x, w, f"{path}[{i}]") for i, x in enumerate(v))
    return parse


def _fixed(*items: Callable) -> Callable:
    """A list of exactly len(items) entries, each with its own type."""
    def parse(v, w: _Where, path: str) -> tuple:
        if not isinstance(v, list) or len(v) != len(items):
            w.fail(path, f"must be a list of {len(items)} entries, not {_type_name(v)}"
                   + (f" of {len(v)}" if isinstance(v, list) else ""))
        return tuple(p(x, w, f"{path}[{i}]") for i, (p, x) in enumerate(zip(items, v)))
    return parse


def _nullable(item: Callable) -> Callable:
    return lambda v, w, path: None if v is None else item(v, w, path)


def _layout(v, w: _Where, path: str) -> dict:
    """A single-ciphertext layout (compiler/layout.py Layout.to_dict), kept as its dict."""
    if not isinstance(v, dict):
        w.fail(path, f"must be an object, not {_type_name(v)}")
    want = {"n", "unit", "period", "zero_padded"}
    if set(v) != want:
        w.fail(path, f"must have exactly the keys {sorted(want)}, not {sorted(v)}")
    for k in ("n", "unit", "period"):
        _count(v[k], w, f"{path}.{k}")
    if v["unit"] == 0 or v["period"] == 0:
        w.fail(path, "must have a non-zero unit and period")
    _bool(v["zero_padded"], w, f"{path}.zero_padded")
    return dict(v)


def _dump(v):
    if isinstance(v, _Record):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_dump(x) for x in v]
    return dict(v) if isinstance(v, dict) else v


class _Record:
    """A JSON object with a fixed set of typed fields. SPEC maps each field to its parser;
    OPTIONAL fields may be absent (older plans) and are then None and left out by to_dict."""
    SPEC: ClassVar[dict[str, Callable]] = {}
    OPTIONAL: ClassVar[frozenset] = frozenset()

    @classmethod
    def parse(cls, v, w: _Where, path: str = "", allowed_extra: frozenset = frozenset()):
        prefix = f"{path}." if path else ""
        if not isinstance(v, dict):
            w.fail(path or "(step)", f"must be an object, not {_type_name(v)}")
        extra = sorted(set(v) - set(cls.SPEC) - allowed_extra)
        if extra:
            w.fail(prefix + str(extra[0]), f"is not a field of this {w.NOUN}")
        kwargs: dict[str, Any] = {}
        for name, parser in cls.SPEC.items():
            if name not in v:
                if name in cls.OPTIONAL:
                    kwargs[name] = None
                    continue
                w.fail(prefix + name, "is missing")
            kwargs[name] = parser(v[name], w, prefix + name)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = _dump(value)
        return out


def _record(cls) -> Callable:
    return lambda v, w, path: cls.parse(v, w, path)


class Step(_Record):
    KIND: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, d, index: int) -> "Step":
        return cls.parse(d, _Where(index, cls.KIND), allowed_extra=frozenset({"op"}))

    def to_dict(self) -> dict:
        return {"op": self.KIND} | super().to_dict()

    def weight_indices(self) -> list[int]:
        return []

    def check_indices(self, w: _Where, n_frame: int) -> None:
        """Indices between the step's own lists (babies, powers, frame rows) in range."""

    def reads(self) -> list[str]:
        """Names of the tensors this step reads (the frame itself is not named)."""
        if hasattr(self, "inputs"):
            return [spec.src for spec in self.inputs]
        return [self.src] if hasattr(self, "src") else []


_BABY = _fixed(_count, _int, _list(_int))          # (source, built from baby or -1, rotations)
_TERM = _fixed(_count, _count)                     # (baby index, weight index)


def _check_babies(w: _Where, babies, n_sources: int, giants) -> None:
    for j, (src, built_from, _) in enumerate(babies):
        if src >= n_sources:
            w.fail(f"babies[{j}][0]", f"names source {src} of {n_sources}")
        if not -1 <= built_from < j:
            w.fail(f"babies[{j}][1]", f"must be -1 or an earlier baby, not {built_from}")
    for path, giant in giants:
        for t, (b_idx, _) in enumerate(giant.terms):
            if b_idx >= len(babies):
                w.fail(f"{path}.terms[{t}][0]", f"names baby {b_idx} of {len(babies)}")


@dataclass(frozen=True)
class Giant(_Record):
    shift: tuple
    terms: tuple
    SPEC = {"shift": _list(_int), "terms": _list(_TERM)}


@dataclass(frozen=True)
class LinearInput(_Record):
    src: str
    switch: int
    replicate: tuple
    SPEC = {"src": _str, "switch": _count, "replicate": _list(_int)}


@dataclass(frozen=True)
class MappedInput(_Record):
    src: str
    switch: int
    SPEC = {"src": _str, "switch": _count}


@dataclass(frozen=True)
class MappedOut(_Record):
    giants: tuple
    bias: int
    SPEC = {"giants": _list(_record(Giant)), "bias": _count}


@dataclass(frozen=True)
class GatherOut(_Record):
    rows: tuple
    weights: tuple
    bias: int
    SPEC = {"rows": _list(_count), "weights": _list(_count), "bias": _count}


@dataclass(frozen=True)
class FirstLinear(Step):
    """The first layer from the frame in the free (im2col-like) layout."""
    out: str
    weights: tuple
    tree: tuple
    bias: int
    level: int
    rescale_last: bool
    layout: dict
    KIND = "first_linear"
    SPEC = {"out": _str, "weights": _list(_count), "tree": _list(_int), "bias": _count,
            "level": _count, "rescale_last": _bool, "layout": _layout}

    def weight_indices(self) -> list[int]:
        return list(self.weights) + [self.bias]


@dataclass(frozen=True)
class GatherLinear(Step):
    """The first layer from a frame laid out per product (compiler/first_gather.py)."""
    out: str
    level: int
    outs: tuple
    tree: tuple
    rescale_last: bool
    KIND = "gather_linear"
    SPEC = {"out": _str, "level": _count, "outs": _list(_record(GatherOut)), "tree": _list(_int),
            "rescale_last": _bool}

    def weight_indices(self) -> list[int]:
        return [i for o in self.outs for i in o.weights] + [o.bias for o in self.outs]

    def check_indices(self, w: _Where, n_frame: int) -> None:
        for o, out in enumerate(self.outs):
            if len(out.rows) != len(out.weights):
                w.fail(f"outs[{o}].weights", f"has {len(out.weights)} entries for {len(out.rows)} rows")
            for r, row in enumerate(out.rows):
                if row >= n_frame:
                    w.fail(f"outs[{o}].rows[{r}]", f"names frame row {row} of {n_frame}")


@dataclass(frozen=True)
class Linear(Step):
    """A single-ciphertext linear layer: babies, Horner over giants, tree, bias."""
    out: str
    level: int
    inputs: tuple
    babies: tuple
    giants: tuple
    rescale_last: bool
    layout: dict
    tree: tuple
    bias: int
    KIND = "linear"
    SPEC = {"out": _str, "level": _count, "inputs": _list(_record(LinearInput)),
            "babies": _list(_BABY), "giants": _list(_record(Giant)), "rescale_last": _bool,
            "layout": _layout, "tree": _list(_int), "bias": _count}

    def weight_indices(self) -> list[int]:
        return [t[1] for g in self.giants for t in g.terms] + [self.bias]

    def check_indices(self, w: _Where, n_frame: int) -> None:
        _check_babies(w, self.babies, len(self.inputs),
                      [(f"giants[{g}]", giant) for g, giant in enumerate(self.giants)])


@dataclass(frozen=True)
class MappedLinear(Step):
    """A linear layer over tensors of several ciphertexts (compiler/mapped.py)."""
    out: str
    level: int
    inputs: tuple
    sources: tuple
    babies: tuple
    outs: tuple
    tree: tuple
    rescale_last: bool
    n_cts: int
    layout: dict | None = None
    KIND = "mlinear"
    SPEC = {"out": _str, "level": _count, "inputs": _list(_record(MappedInput)),
            "sources": _list(_fixed(_count, _count)), "babies": _list(_BABY),
            "outs": _list(_record(MappedOut)), "tree": _list(_int), "rescale_last": _bool,
            "n_cts": _count, "layout": _layout}
    OPTIONAL = frozenset({"layout"})       # absent when the output is a multi-ciphertext grid

    def weight_indices(self) -> list[int]:
        return [t[1] for o in self.outs for g in o.giants for t in g.terms] + [o.bias for o in self.outs]

    def check_indices(self, w: _Where, n_frame: int) -> None:
        for j, (i, _) in enumerate(self.sources):
            if i >= len(self.inputs):
                w.fail(f"sources[{j}][0]", f"names input {i} of {len(self.inputs)}")
        _check_babies(w, self.babies, len(self.sources),
                      [(f"outs[{o}].giants[{g}]", giant) for o, out in enumerate(self.outs)
                       for g, giant in enumerate(out.giants)])


@dataclass(frozen=True)
class Square(Step):
    src: str
    out: str
    level: int
    layout: dict | None = None
    KIND = "square"
    SPEC = {"src": _str, "out": _str, "level": _count, "layout": _layout}
    OPTIONAL = frozenset({"layout"})       # written by version-1 plans only


@dataclass(frozen=True)
class Poly(Step):
    """A polynomial activation: powers by `recipe` (k, a, b, level), then `terms` (k, coeff,
    plaintext scale) and the constant c0, masked to the layout's live slots."""
    src: str
    out: str
    recipe: tuple
    top: int
    terms: tuple
    c0: float
    c0_scale: float
    layout: dict | None
    KIND = "poly"
    SPEC = {"src": _str, "out": _str, "recipe": _list(_fixed(_count, _count, _count, _count)),
            "top": _count, "terms": _list(_fixed(_count, _float, _float)), "c0": _float,
            "c0_scale": _float, "layout": _nullable(_layout)}

    def check_indices(self, w: _Where, n_frame: int) -> None:
        powers = {1}
        for r, (k, a, b, _) in enumerate(self.recipe):
            for pos, factor in ((1, a), (2, b)):
                if factor not in powers:
                    w.fail(f"recipe[{r}][{pos}]", f"multiplies power {factor}, not computed before it")
            powers.add(k)
        for t, (k, _, _) in enumerate(self.terms):
            if k not in powers:
                w.fail(f"terms[{t}][0]", f"uses power {k}, which the recipe does not compute")


@dataclass(frozen=True)
class RotSum(Step):
    """A public sum (an average pool, its 1/count in the next layer's weights): every ciphertext
    of `src` through the rotate-and-add `tree` (compiler/pooling.py); no product, no level."""
    src: str
    out: str
    level: int
    tree: tuple
    KIND = "rotsum"
    SPEC = {"src": _str, "out": _str, "level": _count, "tree": _list(_int)}


STEP_TYPES: dict[str, type[Step]] = {t.KIND: t for t in
                                     (FirstLinear, GatherLinear, Linear, MappedLinear, Square, Poly,
                                      RotSum)}


def parse_steps(docs) -> list[Step]:
    """The plan's steps, typed. Unknown kinds are refused together (one message naming all)."""
    if not isinstance(docs, list):
        raise BundleError(f"the plan's steps must be a list, not {_type_name(docs)}")
    kinds = [d.get("op") if isinstance(d, dict) else None for d in docs]
    unknown = sorted({str(k) for k in kinds} - set(STEP_TYPES))
    if unknown:
        raise BundleError(f"the plan has step kinds this gateway does not know: {', '.join(unknown)}")
    return [STEP_TYPES[k].from_dict(d, i) for i, (k, d) in enumerate(zip(kinds, docs))]


def check_references(steps: list[Step], input_name: str | None, n_weights: int, output: str,
                     n_frame: int) -> None:
    """Every tensor a step reads is written before it, every weight index names a weight of the
    bundle, indices within a step (babies, powers, the `n_frame` laid-out frame rows) are in
    range, and the output is written: a bundle is refused before it runs, not halfway through."""
    known = {input_name} if input_name else set()
    for i, st in enumerate(steps):
        for name in st.reads():
            if name not in known:
                raise BundleError(f"plan step {i} ({st.KIND}): reads tensor '{name}', which no "
                                  f"earlier step writes")
        st.check_indices(_Where(i, st.KIND), n_frame)
        bad = [w for w in st.weight_indices() if w >= n_weights]
        if bad:
            raise BundleError(f"plan step {i} ({st.KIND}): weight index {bad[0]} is out of range "
                              f"(the bundle has {n_weights} weights)")
        known.add(st.out)
    if output not in known:
        raise BundleError(f"the plan's output '{output}' is not written by any step")
