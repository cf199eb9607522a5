"""Gateway side: run a compiled plan on an encrypted frame with public evaluation keys only.

The loop is deliberately short: each step reads named tensors (lists of ciphertexts), writes
one, and frees what no later step reads. Steps are dispatched by a table of handlers: a plan with
a step kind or version this gateway does not know is refused before anything runs. Levels are
tracked here (Pyfhel's mod_level counter is reset by deserialization: the last of the traps
listed in protected_nn/ckks/context.py). Only runtime modules are imported: the gateway never loads the compiler."""
from __future__ import annotations

import numpy as np

from Pyfhel import PyPtxt

from protected_nn.ckks.context import Ckks
from protected_nn.errors import BundleError, InputError
from protected_nn.runtime.plan_format import check_version, decode_array


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
    def __init__(self, plan: dict, ckks: Ckks, weights: list):
        check_version(plan)
        self._handlers = {"first_linear": self._first_linear_step, "linear": self._linear,
                          "gather_linear": self._gather_linear,
                          "mlinear": self._mlinear, "square": self._square, "poly": self._poly_step}
        unknown = sorted({str(st.get("op")) for st in plan["steps"]} - set(self._handlers))
        if unknown:
            raise BundleError(f"the plan has step kinds this gateway does not know: {', '.join(unknown)}")
        self.plan, self.ckks, self.w = plan, ckks, weights
        self.slots = ckks.slots
        self.delta = float(plan["ckks"]["delta"])
        inp = plan["input"]
        self.input_shape = tuple(inp["shape"])
        self.input_size = int(inp["size"])
        self.gather = decode_array(inp["gather"], (int(inp["num_cts"]), self.slots))
        self.depth = len(plan["ckks"]["qi_sizes"]) - 2
        self._last_use = self._last_uses(plan["steps"], plan["output"]["src"])
        self._poly_plain = {}
        for i, step in enumerate(plan["steps"]):
            if step["op"] == "poly":
                self._poly_plain[i] = self._poly_plaintexts(step)

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
        if self.plain_input:                   # laid out in clear; see run()
            return [np.ascontiguousarray(padded[g]) for g in self.gather]
        return [self.ckks.encrypt(padded[g], self.delta) for g in self.gather]

    @property
    def plain_input(self) -> bool:
        """The gateway holds the frame in clear: the first layer multiplies encrypted weights by
        plaintexts (no input encryption, no relinearization, input rotations done in numpy)."""
        return bool(self.plan["input"].get("plain"))

    # --- evaluation -----------------------------------------------------------------------
    def run(self, input_cts: list):
        regs: dict[str, _Reg] = {}
        if not self.plan["input"]["free"]:          # laid-out input, read by name
            regs[self.plan["input"]["name"]] = _Reg(list(input_cts), 0)
        self._input_cts = input_cts
        for idx, step in enumerate(self.plan["steps"]):
            self._idx = idx
            regs[step["out"]] = self._handlers[step["op"]](step, regs)
            for name in [n for n, last in self._last_use.items() if last == idx]:
                regs.pop(name, None)
        out = regs[self.plan["output"]["src"]]
        self.ckks.mod_switch(out.ct, self.depth - out.level)   # smallest result to send
        if self.plain_input:
            # Re-randomize: without it the result would be a deterministic function of the public
            # bundle and the frame, so a bundle holder could test guessed frames against it.
            zero = self.ckks.encrypt(np.zeros(self.slots), out.ct.scale, self.depth)
            self.ckks.add_inplace(out.ct, zero)
        return out.ct

    def serialize(self, ct) -> bytes:
        return self.ckks.ct_to_packed_bytes(ct, int(self.plan["ckks"]["qi_sizes"][0]))

    def infer(self, x: np.ndarray) -> bytes:
        return self.serialize(self.run(self.encrypt_input(x)))

    # --- steps ----------------------------------------------------------------------------
    def _first_linear_step(self, step, regs) -> _Reg:
        return self._first_linear(step, self._input_cts)

    def _poly_step(self, step, regs) -> _Reg:
        return self._poly(regs, step, self._poly_plain[self._idx])

    def _mlinear(self, step, regs) -> _Reg:
        """Tensors over several ciphertexts: babies rotated once per source ciphertext and shared
        by every output ciphertext; per output, Horner over the giant steps (see compiler/mapped.py)."""
        ck = self.ckks
        level = step["level"]
        ins = []
        for spec in step["inputs"]:
            reg = regs[spec["src"]]
            cts = reg.cts
            if spec["switch"] and not isinstance(cts[0], np.ndarray):   # plaintexts: encoded below
                cts = [ck.copy(c) for c in cts]
                for c in cts:
                    ck.mod_switch(c, spec["switch"])
            ins.append(cts)
        sources = [ins[i][c] for i, c in step["sources"]]
        babies = []
        for src, built_from, chain in step["babies"]:
            ct = sources[src] if built_from < 0 else babies[built_from]
            for st in chain:
                ct = np.roll(ct, -st) if isinstance(ct, np.ndarray) else ck.rotate(ct, st)
            babies.append(ct)
        babies = [self._plaintext(b, level) if isinstance(b, np.ndarray) else b for b in babies]
        outs = []
        for out in step["outs"]:
            acc = None
            for giant in out["giants"]:
                inner = None
                size3 = False
                for b_idx, widx in giant["terms"]:
                    prod = self._product(babies[b_idx], self.w[widx])
                    size3 |= not isinstance(babies[b_idx], PyPtxt)
                    inner = prod if inner is None else (ck.add_inplace(inner, prod) or inner)
                if size3:
                    ck.relinearize(inner)
                acc = inner if acc is None else (ck.add_inplace(acc, inner) or acc)
                for st in giant["shift"]:
                    acc = ck.rotate(acc, st)
            outs.append(self._finish(acc, {"tree": step["tree"], "bias": out["bias"],
                                           "rescale_last": step["rescale_last"]}, level,
                                     relinearized=True).ct)
        return _Reg(outs, level + 1)

    def _gather_linear(self, step, regs) -> _Reg:
        """First layer from a frame laid out per product (compiler/first_gather.py): per output
        ciphertext, sum of weight x laid-out frame, rescale, fold, bias."""
        ck = self.ckks
        outs = []
        for out in step["outs"]:
            acc, size3 = None, False
            for row, widx in zip(out["rows"], out["weights"]):
                x = self._input_cts[row]
                if isinstance(x, np.ndarray):
                    x = self._plaintext(x, 0)
                size3 |= not isinstance(x, PyPtxt)
                prod = self._product(x, self.w[widx])
                acc = prod if acc is None else (ck.add_inplace(acc, prod) or acc)
            outs.append(self._finish(acc, {"tree": step["tree"], "bias": out["bias"],
                                           "rescale_last": step["rescale_last"]}, 0,
                                     relinearized=not size3).ct)
        return _Reg(outs, 1)

    def _first_linear(self, step, input_cts) -> _Reg:
        ck = self.ckks
        acc = None
        size3 = False
        for ct, widx in zip(input_cts, step["weights"]):
            if isinstance(ct, np.ndarray):
                ct = self._plaintext(ct, 0)
            size3 |= not isinstance(ct, PyPtxt)
            prod = self._product(ct, self.w[widx])
            acc = prod if acc is None else (ck.add_inplace(acc, prod) or acc)
        return self._finish(acc, step, level=0, relinearized=not size3)

    def _plaintext(self, vec: np.ndarray, level: int):
        """The encoding of a laid-out frame; a vector that encodes to zero (a black frame) would
        make SEAL refuse the product as "transparent": it is encrypted instead."""
        if np.max(np.abs(vec)) * self.delta < 1.0:
            return self.ckks.encrypt(vec, self.delta, level)
        return self.ckks.encode(vec, self.delta, level)

    def _product(self, x, weight):
        """Encrypted weight times a ciphertext (size 3, relinearized later) or a plaintext."""
        if isinstance(x, PyPtxt):
            return self.ckks.multiply_plain(weight, x)
        return self.ckks.multiply_no_relin(x, weight)

    def _linear(self, step, regs) -> _Reg:
        ck = self.ckks
        level = step["level"]
        sources = []
        for spec in step["inputs"]:
            reg = regs[spec["src"]]
            ct = reg.ct
            if spec["switch"] or spec["replicate"]:
                ct = ck.copy(ct)
                ck.mod_switch(ct, spec["switch"])
                for shift in spec["replicate"]:
                    ck.add_inplace(ct, ck.rotate(ct, shift))
            sources.append(ct)
        babies = []                       # rot(x_i, b), each built from an earlier one
        for i, src, chain in step["babies"]:
            ct = sources[i] if src < 0 else babies[src]
            for st in chain:
                ct = ck.rotate(ct, st)
            babies.append(ct)
        acc = None                        # Horner over the giant steps: acc = rot(acc, dG) + inner
        for giant in step["giants"]:
            inner = None
            for b_idx, widx in giant["terms"]:
                prod = ck.multiply_no_relin(babies[b_idx], self.w[widx])
                inner = prod if inner is None else (ck.add_inplace(inner, prod) or inner)
            ck.relinearize(inner)
            acc = inner if acc is None else (ck.add_inplace(acc, inner) or acc)
            for st in giant["shift"]:
                acc = ck.rotate(acc, st)
        return self._finish(acc, step, level, relinearized=True)

    def _finish(self, acc, step, level, relinearized=False) -> _Reg:
        ck = self.ckks
        if not relinearized:
            ck.relinearize(acc)
        late = step.get("rescale_last", False)   # output layer: tree at the large scale
        if not late:
            ck.rescale(acc)
        for shift in step["tree"]:
            ck.add_inplace(acc, ck.rotate(acc, shift))
        bias = self.w[step["bias"]]
        bias.set_scale(acc.scale)    # same value up to an ulp of double rounding
        ck.add_inplace(acc, bias)
        if late:
            ck.rescale(acc)
        return _Reg(acc, level + 1)

    def _square(self, step, regs) -> _Reg:
        ck = self.ckks
        src = regs[step["src"]]
        out = []
        for c in src.cts:
            ct = ck.multiply_no_relin(c, c)
            ck.relinearize(ct)
            ck.rescale(ct)
            out.append(ct)
        return _Reg(out, src.level + 1)

    def _poly_plaintexts(self, step):
        lay = step.get("layout")
        if lay is None:                 # a tensor over several ciphertexts: nothing reads the rest
            mask = np.ones(self.slots)
        else:
            mask = np.zeros(self.slots)
            for copy in range(0, self.slots, int(lay["period"])):
                mask[copy + np.arange(int(lay["n"])) * int(lay["unit"])] = 1.0
        consts = {k: self.ckks.encode(np.full(self.slots, c), scale, step["top"])
                  for k, c, scale in step["terms"]}
        c0 = self.ckks.encode(mask * step["c0"], step["c0_scale"], step["top"]) if step["c0"] else None
        return consts, c0

    def _poly(self, regs, step, plain) -> _Reg:
        ck = self.ckks
        consts, c0 = plain
        src = regs[step["src"]]
        if len(src.cts) > 1:
            outs = [self._poly({"_": _Reg(c, src.level)}, dict(step, src="_"), plain).ct for c in src.cts]
            return _Reg(outs, step["top"] + 1)
        powers = {1: _Reg(src.ct, src.level)}
        for k, a, b, lvl in step["recipe"]:
            x, y = self._at_level(powers[a], lvl), self._at_level(powers[b], lvl)
            prod = ck.multiply_no_relin(x, y)
            ck.relinearize(prod)
            ck.rescale(prod)
            powers[k] = _Reg(prod, lvl + 1)
        acc = None
        for k, _, _ in step["terms"]:
            term = ck.multiply_plain(self._at_level(powers[k], step["top"]), consts[k])
            acc = term if acc is None else (ck.add_inplace(acc, term) or acc)
        if c0 is not None:
            ck.add_plain_inplace(acc, c0)
        ck.rescale(acc)
        return _Reg(acc, step["top"] + 1)

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
            srcs = [s["src"] for s in step.get("inputs", [])] + ([step["src"]] if "src" in step else [])
            for s in srcs:
                last[s] = i
        last.pop(output, None)
        return last
