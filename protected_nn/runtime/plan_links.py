"""What ties a plan's steps to its other sections (plan_sections.py reads both first): every
rotation a step does on a ciphertext has a Galois key among `rotation_steps`, every layout stays
within the ring, every level leaves a prime to drop, the frame the gateway keeps in clear is read
only by a step that can take it, and the tensors and weights the steps name exist."""
from __future__ import annotations

from typing import Callable, NamedTuple

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


# A rotation's field is yielded as parts, ("babies", j, 2, i), and spelled only for an error:
# a large plan has thousands of rotations.

def _mapped_rotations(st: S.MappedLinear, plain_tensor: str | None):
    """Baby rotations of a clear frame are done in numpy (no key); every other one needs a key."""
    clear = []
    for j, (src, built_from, chain) in enumerate(st.babies):
        spec = st.inputs[st.sources[src][0]] if built_from < 0 else None
        clear.append(spec.src == plain_tensor if spec is not None else clear[built_from])
        if not clear[j]:
            yield from ((("babies", j, 2, i), k) for i, k in enumerate(chain))
    for o, out in enumerate(st.outs):
        for g, giant in enumerate(out.giants):
            yield from ((("outs", o, "giants", g, "shift", i), k) for i, k in enumerate(giant.shift))
    yield from ((("tree", i), k) for i, k in enumerate(st.tree))


def _linear_rotations(st: S.Linear, plain_tensor: str | None):
    for n, spec in enumerate(st.inputs):
        yield from ((("inputs", n, "replicate", i), k) for i, k in enumerate(spec.replicate))
    for j, (_, _, chain) in enumerate(st.babies):
        yield from ((("babies", j, 2, i), k) for i, k in enumerate(chain))
    for g, giant in enumerate(st.giants):
        yield from ((("giants", g, "shift", i), k) for i, k in enumerate(giant.shift))
    yield from ((("tree", i), k) for i, k in enumerate(st.tree))


def _tree_rotations(st, plain_tensor: str | None):
    return ((("tree", i), k) for i, k in enumerate(st.tree))


def _no_rotations(st, plain_tensor: str | None):
    return iter(())


def field_path(parts: tuple) -> str:
    """("outs", 0, "giants", 1, "shift", 2) -> 'outs[0].giants[1].shift[2]', as steps.py names it."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _at(st):
    return [("level", st.level)]


def _poly_levels(st: S.Poly):
    return [(f"recipe[{r}][3]", rec[3]) for r, rec in enumerate(st.recipe)] + [("top", st.top)]


class Rules(NamedTuple):
    """What a step kind does, read from the evaluator's handler: `rotations(step, clear_frame)`
    -> (field parts, amount) of each rotation on a ciphertext (each needs a Galois key); `rescales(step)`
    -> (field, level) of each rescale (each needs a prime left below the depth)."""
    rotations: Callable
    rescales: Callable


STEP_RULES = {S.FirstLinear: Rules(_tree_rotations, _at), S.GatherLinear: Rules(_tree_rotations, _at),
              S.Linear: Rules(_linear_rotations, _at), S.MappedLinear: Rules(_mapped_rotations, _at),
              S.Square: Rules(_no_rotations, _at), S.Poly: Rules(_no_rotations, _poly_levels),
              S.RotSum: Rules(_tree_rotations, lambda st: [])}   # a sum: rotations, no rescale


def rotation_levels(plan) -> dict[int, int]:
    """Per rotation step (mod slots), the lowest level any step of `plan` rotates by it at, as
    the evaluator runs them: babies, giants and copies at the step's level; a tree after the
    step's rescale, unless it is summed before (rescale_last) or the step has none (rotsum).
    A Galois key is read only for the primes left there (the owner stores the rest as zero
    rows: runtime/owner.trim_key_rows)."""
    return step_rotation_levels(plan.steps, plan.slots,
                                plan.input_tensor if plan.plain_input else None)


def step_rotation_levels(steps, slots: int, plain_tensor: str | None) -> dict[int, int]:
    """rotation_levels of typed steps (the planner's own reading, before the plan is whole)."""
    out: dict[int, int] = {}
    for st in steps:
        for parts, k in STEP_RULES[type(st)].rotations(st, plain_tensor):
            late = parts[0] == "tree" and not isinstance(st, S.RotSum) and not st.rescale_last
            level = st.level + (1 if late else 0)
            out[k % slots] = min(out.get(k % slots, level), level)
    return out


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
        rules = STEP_RULES[type(st)]
        for path, level in rules.rescales(st):
            if level >= depth:
                w.fail(path, f"({level}) leaves no prime to drop: the modulus chain has {depth} levels")
        for parts, k in rules.rotations(st, plain_tensor):
            if k % slots not in keys:
                w.fail(field_path(parts), f"rotates by {k}, a step the plan's rotation_steps (its Galois keys) "
                             f"do not cover")
