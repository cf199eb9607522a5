"""What ties a plan's steps to its other sections (plan_sections.py reads both first): every
rotation a step does on a ciphertext has a Galois key among `rotation_steps`, every layout stays
within the ring, every level leaves a prime to drop, the frame the gateway keeps in clear is read
only by a step that can take it, and the tensors and weights the steps name exist."""
from __future__ import annotations

from protected_nn.errors import BundleError
from protected_nn.runtime import steps as S
from protected_nn.runtime.steps import _Where


def check_layout(lay: dict | None, slots: int, w, path: str) -> None:
    """A layout's copies (every `period` slots, `n` values `unit` apart) inside the ring."""
    if lay is None:
        return
    last = (lay["n"] - 1) * lay["unit"]
    if last >= lay["period"]:
        w.fail(path, f"puts value {lay['n'] - 1} at slot {last}, beyond its period {lay['period']}")
    if lay["period"] > slots or slots % lay["period"]:
        w.fail(path, f"has a period of {lay['period']} slots, which does not divide the ring's {slots}")


def _mapped_rotations(st: S.MappedLinear, plain_tensor: str | None):
    """Baby rotations of a clear frame are done in numpy (no key); every other one needs a key."""
    clear = []
    for j, (src, built_from, chain) in enumerate(st.babies):
        spec = st.inputs[st.sources[src][0]] if built_from < 0 else None
        clear.append(spec.src == plain_tensor if spec is not None else clear[built_from])
        if not clear[j]:
            yield from ((f"babies[{j}][2][{i}]", k) for i, k in enumerate(chain))
    for o, out in enumerate(st.outs):
        for g, giant in enumerate(out.giants):
            yield from ((f"outs[{o}].giants[{g}].shift[{i}]", k) for i, k in enumerate(giant.shift))
    yield from ((f"tree[{i}]", k) for i, k in enumerate(st.tree))


def _linear_rotations(st: S.Linear, plain_tensor: str | None):
    for n, spec in enumerate(st.inputs):
        yield from ((f"inputs[{n}].replicate[{i}]", k) for i, k in enumerate(spec.replicate))
    for j, (_, _, chain) in enumerate(st.babies):
        yield from ((f"babies[{j}][2][{i}]", k) for i, k in enumerate(chain))
    for g, giant in enumerate(st.giants):
        yield from ((f"giants[{g}].shift[{i}]", k) for i, k in enumerate(giant.shift))
    yield from ((f"tree[{i}]", k) for i, k in enumerate(st.tree))


def _tree_rotations(st, plain_tensor: str | None):
    return ((f"tree[{i}]", k) for i, k in enumerate(st.tree))


def _no_rotations(st, plain_tensor: str | None):
    return iter(())


# The rotations each step kind does on ciphertexts (the evaluator's handlers, read for keys).
KEY_ROTATIONS = {S.FirstLinear: _tree_rotations, S.GatherLinear: _tree_rotations,
                 S.Linear: _linear_rotations, S.MappedLinear: _mapped_rotations,
                 S.Square: _no_rotations, S.Poly: _no_rotations}


def _step_levels(st):
    """(field, level) a step works at: each must leave a prime to drop (below the depth)."""
    if isinstance(st, S.Poly):
        return [(f"recipe[{r}][3]", rec[3]) for r, rec in enumerate(st.recipe)] + [("top", st.top)]
    return [("level", st.level)] if hasattr(st, "level") else []


def check_steps(plan) -> None:
    """`plan`: a plan_sections.PlanDoc whose sections and steps are each well-formed."""
    slots, depth = plan.slots, plan.ckks.depth
    keys = {k % slots for k in plan.rotation_steps} | {0}
    plain_tensor = plan.input_tensor if plan.plain_input else None
    S.check_references(list(plan.steps), plan.input_tensor, len(plan.weights), plan.output.src,
                       plan.input.num_cts)
    for i, st in enumerate(plan.steps):
        w = _Where(i, st.KIND)
        if plain_tensor is not None and plain_tensor in st.reads() and not isinstance(st, S.MappedLinear):
            raise BundleError(f"plan step {i} ({st.KIND}): reads the frame '{plain_tensor}', which "
                              f"this plan keeps in clear (input.plain): only an mlinear step can")
        check_layout(getattr(st, "layout", None), slots, w, "layout")
        for path, level in _step_levels(st):
            if level >= depth:
                w.fail(path, f"({level}) leaves no prime to drop: the modulus chain has {depth} levels")
        for path, k in KEY_ROTATIONS[type(st)](st, plain_tensor):
            if k % slots not in keys:
                w.fail(path, f"rotates by {k}, a step the plan's rotation_steps (its Galois keys) "
                             f"do not cover")
