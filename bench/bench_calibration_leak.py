"""What the public activation polynomials say about the owner's calibration data (issue 15 item 11).

    .venv/bin/python bench/bench_calibration_leak.py [--seeds 3] [--degree 4]

Each non-polynomial activation (Relu, Sigmoid, ...) is replaced by a least-squares fit on
Chebyshev nodes of [lo - 0.1 w, hi + 0.1 w], [lo, hi] being the range its input took on the
owner's calibration data (protected_nn/frontend/ops/activations.py). The fitted coefficients are
public: they are in the plan of every bundle. This bench plays the bundle holder: it protects
random Relu CNNs (protected_nn.zoo.random_cnn) with random calibration data, reads ONLY the
bundle's plan (compiled, without the keys: they play no part here), guesses the activation (Relu), solves the 2-parameter fit for (lo, hi) and compares
with the truth (the frontend's own record). It also reads the output's magnitude off the result
scale: 2^(31 - output_bits) with output_bits chosen from the calibrated output range.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protected_nn import zoo  # noqa: E402
from protected_nn.compiler.planner import compile_graph  # noqa: E402
from protected_nn.frontend import load_onnx  # noqa: E402
from protected_nn.frontend.ops.activations import RANGE_MARGIN, fit_polynomial  # noqa: E402


def relu(x):
    return np.maximum(x, 0.0)


def reference_outputs(path: Path, cal: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path))
    return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[None]})[0] for x in cal])


def plan_polynomials(plan: dict) -> list[np.ndarray]:
    out = []
    for step in plan["steps"]:
        if step["op"] == "poly":
            deg = max([int(k) for k, _, _ in step["terms"]] + [1])
            c = np.zeros(deg + 1)
            c[0] = step["c0"]
            for k, coeff, _ in step["terms"]:
                c[int(k)] = coeff
            out.append(c)
    return out


def invert(coeffs: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of the calibration range whose Relu fit gives `coeffs` (least squares over 2 unknowns)."""
    from scipy.optimize import least_squares
    deg = len(coeffs) - 1

    def resid(p):
        lo, hi = p[0] - abs(p[1]), p[0] + abs(p[1])
        return fit_polynomial(relu, lo, hi, deg)[0] - coeffs
    best = None
    for centre in np.linspace(-4, 4, 33):
        for half in (0.1, 0.3, 1.0, 3.0, 8.0):
            r = least_squares(resid, [centre, half], xtol=1e-14, ftol=1e-14, gtol=1e-14)
            if best is None or r.cost < best.cost:
                best = r
    lo_w, hi_w = best.x[0] - abs(best.x[1]), best.x[0] + abs(best.x[1])
    width = (hi_w - lo_w) / (1 + 2 * RANGE_MARGIN)        # undo the public margin
    return lo_w + RANGE_MARGIN * width, hi_w - RANGE_MARGIN * width


def magnitude_interval(scale_bits: float) -> tuple[float, float]:
    """What the result scale says about max |output| on the calibration data. api.protect picks
    output_bits = max(4, ceil(log2(4 m + 1)) + 1) and the scale 2^(31 - output_bits) clamped to
    [2^16, 2^28] (planner.final_scale_bits): inverting gives m within a factor of ~2, or only an
    upper bound when output_bits is at its floor of 4."""
    bits = 31 - int(round(scale_bits))
    hi = (2.0 ** (bits - 1) - 1) / 4
    lo = 0.0 if bits <= 4 else (2.0 ** (bits - 2) - 1) / 4
    return lo, hi


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--degree", type=int, default=4)
    args = p.parse_args(argv)
    errors, factors = [], []
    with tempfile.TemporaryDirectory() as d:
        for seed in range(args.seeds):
            path = zoo.save(zoo.random_cnn(seed, activation="relu"), Path(d) / f"m{seed}.onnx")
            rng = np.random.default_rng(100 + seed)
            cal = rng.uniform(0, 1, (8, 2, 16, 16)).astype(np.float32)     # the owner's (secret) data
            # The bundle's plan is compile_graph's document (api.protect stores json.dumps(plan.doc));
            # compiling without key generation keeps this bench light (a Relu CNN needs N = 16384).
            graph = load_onnx(str(path), calibration=cal, poly_degree=args.degree)
            ys = reference_outputs(path, cal)
            output_bits = max(4, int(math.ceil(math.log2(float(np.max(np.abs(ys))) * 4 + 1))) + 1)  # as api.protect
            plan = compile_graph(graph, output_bits).doc                   # public: in the bundle
            truths = [layer.fit_range for layer in graph.layers if getattr(layer, "op", None) == "Relu"]
            for coeffs, (lo_w, hi_w) in zip(plan_polynomials(plan), truths):
                width = (hi_w - lo_w) / (1 + 2 * RANGE_MARGIN)
                lo, hi = lo_w + RANGE_MARGIN * width, hi_w - RANGE_MARGIN * width
                rlo, rhi = invert(coeffs)
                err = max(abs(rlo - lo), abs(rhi - hi)) / max(hi - lo, 1e-12)
                errors.append(err)
                print(f"seed {seed}: calibration range [{lo:.6f}, {hi:.6f}], recovered from the plan "
                      f"[{rlo:.6f}, {rhi:.6f}] (error {err:.1e} of the width)")
            magnitude = float(np.max(np.abs(ys)))
            scale_bits = math.log2(float(plan["output"]["scale"]))
            lo_m, hi_m = magnitude_interval(scale_bits)
            inside = lo_m <= magnitude < hi_m
            factors.append(inside)
            print(f"seed {seed}: output scale 2^{scale_bits:g} -> max |output| in [{lo_m:.4g}, {hi_m:.4g}); "
                  f"true max |output| on the calibration data {magnitude:.4g} ({'inside' if inside else 'OUTSIDE'})")
    print(f"activations: {len(errors)}, worst recovery error {max(errors):.1e} of the range width; "
          f"output magnitude inside the interval read off the scale: {sum(factors)}/{len(factors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
