"""Gateway side: run a compiled plan on an encrypted frame with public evaluation keys only.

The loop is deliberately short: each step reads named tensors (lists of ciphertexts), writes
one, and frees what no later step reads. The plan is typed (runtime/plan_sections.py, steps.py:
every section and step checked) and steps are dispatched by a table of handlers, one per step
type: a plan with a step kind or version this gateway does not know, or a malformed step or
section, is refused before anything runs. Levels are tracked here (Pyfhel's mod_level counter is
reset by deserialization: the last of the traps listed in protected_nn/ckks/context.py). Only
runtime modules are imported: the gateway never loads the compiler."""
from __future__ import annotations

import numpy as np

from Pyfhel import PyPtxt

from protected_nn.ckks.context import Ckks
from protected_nn.errors import BundleError, InputError
from protected_nn.runtime import steps as S
from protected_nn.runtime.plan_sections import PlanDoc, parse_plan


class _Reg:
    """A tensor: one ciphertext (`ct`) or several (`cts`), all at `level`."""
    __slots__ = ("cts", "level")

    def __init__(self, ct, level: int):
        self.cts = list(ct) if isinstance(ct, list) else [ct]
        self.level = level

    @property
    def ct(self):
        return self.cts[0]


class Evaluator:
    def __init__(self, plan: PlanDoc | dict, ckks: Ckks, weights: list):
        if not isinstance(plan, PlanDoc):
            plan = parse_plan(plan)    # version, steps, sections: refused before anything runs
        self._handlers = {S.FirstLinear: self._first_linear, S.Linear: self._linear,
                          S.GatherLinear: self._gather_linear,
                          S.MappedLinear: self._mlinear, S.Square: self._square, S.Poly: self._poly_step,
                          S.RotSum: self._rotsum}
        assert set(self._handlers) == set(S.STEP_TYPES.values()), "a step kind without a handler"
        if len(weights) != len(plan.weights):
            raise BundleError(f"{len(weights)} weight ciphertexts for a plan of {len(plan.weights)}")
        self.plan, self.ckks, self.w = plan, ckks, weights
        self.steps = plan.steps
        self.slots = plan.slots
        self.delta = plan.ckks.delta
        self.input_shape = tuple(plan.input.shape)
        self.gather = plan.gather
        self.depth = plan.ckks.depth
        self.plain_input = plan.plain_input
        self._last_use = self._last_uses(self.steps, plan.output.src)
        self._poly_plain = {i: self._poly_plaintexts(step) for i, step in enumerate(self.steps)
                            if isinstance(step, S.Poly)}

    # --- input --------------------------------------------------------------------------
    def encrypt_input(self, x: np.ndarray) -> list:
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise InputError(f"input dtype {x.dtype} is not numeric")
        if tuple(x.shape) != self.input_shape:
            raise InputError(f"input shape {tuple(x.shape)} does not match the model input "
                             f"{self.input_shape}")
        flat = x.astype(np.float64).reshape(-1)
        if not np.all(np.isfinite(flat)):
            raise InputError("input contains NaN or infinite values")
        padded = np.append(flat, 0.0)          # index -1 (unused slot) reads the trailing zero
        if self.plain_input:                   # laid out in clear (PlanDoc.plain_input); see run()
            return [np.ascontiguousarray(padded[g]) for g in self.gather]
        return [self.ckks.encrypt(padded[g], self.delta) for g in self.gather]

    # --- evaluation -----------------------------------------------------------------------
    def run(self, input_cts: list):
        regs: dict[str, _Reg] = {}
        if self.plan.input_tensor is not None:      # laid-out input, read by name
            regs[self.plan.input_tensor] = _Reg(list(input_cts), 0)
        self._input_cts = input_cts
        for idx, step in enumerate(self.steps):
            self._idx = idx
            regs[step.out] = self._handlers[type(step)](step, regs)
            for name in [n for n, last in self._last_use.items() if last == idx]:
                regs.pop(name, None)
        out = regs[self.plan.output.src]
        self.ckks.mod_switch(out.ct, self.depth - out.level)   # smallest result to send
        if self.plain_input:
            # Re-randomize: without it the result would be a deterministic function of the public
            # bundle and the frame, so a bundle holder could test guessed frames against it.
            zero = self.ckks.encrypt(np.zeros(self.slots), out.ct.scale, self.depth)
            self.ckks.add_inplace(out.ct, zero)
        return out.ct

    def serialize(self, ct) -> bytes:
        return self.ckks.ct_to_packed_bytes(ct, self.plan.ckks.result_bits)

    def infer(self, x: np.ndarray) -> bytes:
        return self.serialize(self.run(self.encrypt_input(x)))

    # --- steps ----------------------------------------------------------------------------
    def _poly_step(self, step: S.Poly, regs) -> _Reg:
        src = regs[step.src]
        plain = self._poly_plain[self._idx]
        outs = [self._poly(_Reg(c, src.level), step, plain) for c in src.cts]
        return _Reg(outs, step.top + 1)

    def _mlinear(self, step: S.MappedLinear, regs) -> _Reg:
        """Tensors over several ciphertexts: babies rotated once per source ciphertext and shared
        by every output ciphertext; per output, Horner over the giant steps (see compiler/mapped.py)."""
        ck = self.ckks
        level = step.level
        ins = []
        for spec in step.inputs:
            cts = regs[spec.src].cts
            if spec.switch and not isinstance(cts[0], np.ndarray):   # plaintexts: encoded below
                cts = [ck.copy(c) for c in cts]
                for c in cts:
                    ck.mod_switch(c, spec.switch)
            ins.append(cts)
        sources = [ins[i][c] for i, c in step.sources]
        babies = self._babies(step.babies, sources)
        babies = [self._plaintext(b, level) if isinstance(b, np.ndarray) else b for b in babies]
        outs = []
        for out in step.outs:
            acc = None
            for giant in out.giants:
                inner, size3 = self._dot([babies[b] for b, _ in giant.terms],
                                         [self.w[w] for _, w in giant.terms])
                if size3:
                    ck.relinearize(inner)
                acc = inner if acc is None else (ck.add_inplace(acc, inner) or acc)
                for st in giant.shift:
                    acc = ck.rotate(acc, st)
            outs.append(self._finish(acc, step.tree, out.bias, step.rescale_last, level,
                                     relinearized=True))
        return _Reg(outs, level + 1)

    def _gather_linear(self, step: S.GatherLinear, regs) -> _Reg:
        """First layer from a frame laid out per product (compiler/first_gather.py): per output
        ciphertext, sum of weight x laid-out frame, rescale, fold, bias."""
        outs = []
        for out in step.outs:
            pairs = list(zip(out.rows, out.weights))
            xs = [self._input_cts[row] for row, _ in pairs]
            xs = [self._plaintext(x, 0) if isinstance(x, np.ndarray) else x for x in xs]
            acc, size3 = self._dot(xs, [self.w[w] for _, w in pairs])
            outs.append(self._finish(acc, step.tree, out.bias, step.rescale_last, 0,
                                     relinearized=not size3))
        return _Reg(outs, 1)

    def _first_linear(self, step: S.FirstLinear, regs) -> _Reg:
        pairs = list(zip(self._input_cts, step.weights))
        xs = [self._plaintext(x, 0) if isinstance(x, np.ndarray) else x for x, _ in pairs]
        acc, size3 = self._dot(xs, [self.w[w] for _, w in pairs])
        return _Reg(self._finish(acc, step.tree, step.bias, step.rescale_last, 0,
                                 relinearized=not size3), 1)

    def _plaintext(self, vec: np.ndarray, level: int):
        """The encoding of a laid-out frame; a vector that encodes to zero (a black frame) would
        make SEAL refuse the product as "transparent": it is encrypted instead."""
        if np.max(np.abs(vec)) * self.delta < 1.0:
            return self.ckks.encrypt(vec, self.delta, level)
        return self.ckks.encode(vec, self.delta, level)

    def _dot(self, xs: list, weights: list):
        """sum_t xs[t] * weights[t] (encrypted weights times ciphertexts or plaintexts) and
        whether the sum has size 3 (a ciphertext term: relinearized later, once per sum)."""
        plain = [t for t, x in enumerate(xs) if isinstance(x, PyPtxt)]
        enc = [t for t, x in enumerate(xs) if not isinstance(x, PyPtxt)]
        parts = [self.ckks.dot([xs[t] for t in group], [weights[t] for t in group])
                 for group in (enc, plain) if group]
        for part in parts[1:]:
            self.ckks.add_inplace(parts[0], part)
        return parts[0], bool(enc)

    def _babies(self, specs, sources: list) -> list:
        """rot(x, chain) per baby spec (source, built_from, chain): from its source ciphertext
        or from an earlier baby. Babies whose chains start from the same parent are rotated
        together (ckks.rotate_many: one key-switching decomposition of the parent for all of
        them); the rest of a chain, one rotation at a time."""
        out: list = [None] * len(specs)
        for n, (src, built_from, chain) in enumerate(specs):
            if out[n] is not None:
                continue
            parent = sources[src] if built_from < 0 else out[built_from]
            if not chain or isinstance(parent, np.ndarray):
                ct = parent
                for st in chain:
                    ct = np.roll(ct, -st)
                out[n] = ct
                continue
            group = [m for m in range(n, len(specs)) if out[m] is None and specs[m][2]
                     and specs[m][1] == built_from and (built_from >= 0 or specs[m][0] == src)]
            firsts = list(dict.fromkeys(specs[m][2][0] for m in group))
            rotated = dict(zip(firsts, self.ckks.rotate_many(parent, firsts)))
            for m in group:
                ct = rotated[specs[m][2][0]]
                for st in specs[m][2][1:]:
                    ct = self.ckks.rotate(ct, st)
                out[m] = ct
        return out

    def _linear(self, step: S.Linear, regs) -> _Reg:
        ck = self.ckks
        level = step.level
        sources = []
        for spec in step.inputs:
            ct = regs[spec.src].ct
            if spec.switch or spec.replicate:
                ct = ck.copy(ct)
                ck.mod_switch(ct, spec.switch)
                for shift in spec.replicate:
                    ck.add_inplace(ct, ck.rotate(ct, shift))
            sources.append(ct)
        babies = self._babies(step.babies, sources)   # rot(x_i, b), each from an earlier one
        acc = None                        # Horner over the giant steps: acc = rot(acc, dG) + inner
        for giant in step.giants:
            inner, _ = self._dot([babies[b] for b, _ in giant.terms],
                                 [self.w[w] for _, w in giant.terms])
            ck.relinearize(inner)
            acc = inner if acc is None else (ck.add_inplace(acc, inner) or acc)
            for st in giant.shift:
                acc = ck.rotate(acc, st)
        return _Reg(self._finish(acc, step.tree, step.bias, step.rescale_last, level,
                                 relinearized=True), level + 1)

    def _finish(self, acc, tree, bias_idx: int, late: bool, level: int, relinearized=False):
        """Rescale, fold the tree, add the bias. `late` (output layer): the tree is summed at the
        large scale, before the rescale."""
        ck = self.ckks
        if not relinearized:
            ck.relinearize(acc)
        if not late:
            ck.rescale(acc)
        for shift in tree:
            ck.add_inplace(acc, ck.rotate(acc, shift))
        bias = self.w[bias_idx]
        bias.set_scale(acc.scale)    # same value up to an ulp of double rounding
        ck.add_inplace(acc, bias)
        if late:
            ck.rescale(acc)
        return acc

    def _rotsum(self, step: S.RotSum, regs) -> _Reg:
        """A public pool: x + rot(x, t) per tree shift, per ciphertext (compiler/pooling.py)."""
        ck = self.ckks
        src = regs[step.src]
        outs = []
        for c in src.cts:
            acc = None
            for shift in step.tree:
                rotated = ck.rotate(c if acc is None else acc, shift)
                acc = ck.copy(c) if acc is None else acc
                ck.add_inplace(acc, rotated)
            outs.append(ck.copy(c) if acc is None else acc)
        return _Reg(outs, src.level)

    def _square(self, step: S.Square, regs) -> _Reg:
        ck = self.ckks
        src = regs[step.src]
        out = []
        for c in src.cts:
            ct = ck.multiply_no_relin(c, c)
            ck.relinearize(ct)
            ck.rescale(ct)
            out.append(ct)
        return _Reg(out, src.level + 1)

    def _poly_plaintexts(self, step: S.Poly):
        lay = step.layout
        if lay is None:                 # a tensor over several ciphertexts: nothing reads the rest
            mask = np.ones(self.slots)
        else:
            mask = np.zeros(self.slots)
            for copy in range(0, self.slots, int(lay["period"])):
                mask[copy + np.arange(int(lay["n"])) * int(lay["unit"])] = 1.0
        consts = {k: self.ckks.encode(np.full(self.slots, c), scale, step.top)
                  for k, c, scale in step.terms}
        c0 = self.ckks.encode(mask * step.c0, step.c0_scale, step.top) if step.c0 else None
        return consts, c0

    def _poly(self, src: _Reg, step: S.Poly, plain):
        """One ciphertext through the polynomial."""
        ck = self.ckks
        consts, c0 = plain
        powers = {1: src}
        for k, a, b, lvl in step.recipe:
            x, y = self._at_level(powers[a], lvl), self._at_level(powers[b], lvl)
            prod = ck.multiply_no_relin(x, y)
            ck.relinearize(prod)
            ck.rescale(prod)
            powers[k] = _Reg(prod, lvl + 1)
        acc = None
        for k, _, _ in step.terms:
            term = ck.multiply_plain(self._at_level(powers[k], step.top), consts[k])
            acc = term if acc is None else (ck.add_inplace(acc, term) or acc)
        if c0 is not None:
            ck.add_plain_inplace(acc, c0)
        ck.rescale(acc)
        return acc

    def _at_level(self, reg: _Reg, level: int):
        if reg.level == level:
            return reg.ct
        ct = self.ckks.copy(reg.ct)
        self.ckks.mod_switch(ct, level - reg.level)
        return ct

    @staticmethod
    def _last_uses(steps, output) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, step in enumerate(steps):
            for s in step.reads():
                last[s] = i
        last.pop(output, None)
        return last
