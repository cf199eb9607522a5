"""What the public activation polynomials say about the owner's calibration data (issue 15 item 11).

    .venv/bin/python bench/bench_calibration_leak.py [--seeds 3] [--degree 4]

Each non-polynomial activation (Relu, Sigmoid, ...) is replaced by a least-squares fit on
Chebyshev nodes of [lo - 0.1 w, hi + 0.1 w], [lo, hi] being the range its input took on the
owner's calibration data (protected_nn/frontend/ops/activations.py). The fitted coefficients are
public: they are in the plan of every bundle. This bench plays the bundle holder: it protects
random Relu CNNs (protected_nn.zoo.random_cnn) with random calibration data, reads ONLY the
bundle's plan, guesses the activation (Relu), solves the 2-parameter fit for (lo, hi) and compares
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

from protected_nn import api, zoo  # noqa: E402
from protected_nn.frontend import load_onnx  # noqa: E402
from protected_nn.frontend.ops.activations import RANGE_MARGIN, fit_polynomial  # noqa: E402


def relu(x):
    return np.maximum(x, 0.0)


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
    for centre in np.linspace(-4, 4, 9):
        for half in (0.2, 1.0, 4.0):
            r = least_squares(resid, [centre, half], xtol=1e-14, ftol=1e-14, gtol=1e-14)
            if best is None or r.cost < best.cost:
                best = r
    lo_w, hi_w = best.x[0] - abs(best.x[1]), best.x[0] + abs(best.x[1])
    width = (hi_w - lo_w) / (1 + 2 * RANGE_MARGIN)        # undo the public margin
    return lo_w + RANGE_MARGIN * width, hi_w - RANGE_MARGIN * width


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
            prot = api.protect(path, calibration=cal, options=api.ProtectOptions(poly_degree=args.degree))
            plan = prot.artifacts.plan_json()                              # public: in the bundle
            truth_graph = load_onnx(str(path), calibration=cal, poly_degree=args.degree)
            truths = [layer.fit_range for layer in truth_graph.layers if getattr(layer, "op", None) == "Relu"]
            for coeffs, (lo_w, hi_w) in zip(plan_polynomials(plan), truths):
                width = (hi_w - lo_w) / (1 + 2 * RANGE_MARGIN)
                lo, hi = lo_w + RANGE_MARGIN * width, hi_w - RANGE_MARGIN * width
                rlo, rhi = invert(coeffs)
                err = max(abs(rlo - lo), abs(rhi - hi)) / max(hi - lo, 1e-12)
                errors.append(err)
                print(f"seed {seed}: calibration range [{lo:.6f}, {hi:.6f}], recovered from the plan "
                      f"[{rlo:.6f}, {rhi:.6f}] (error {err:.1e} of the width)")
            import onnxruntime as ort
            sess = ort.InferenceSession(str(path))
            ys = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[None]})[0] for x in cal])
            magnitude = float(np.max(np.abs(ys)))
            scale_bits = math.log2(float(plan["output"]["scale"]))
            guess = 2.0 ** (31 - scale_bits - 1)          # output_bits = 31 - scale bits; |y| < 2^(bits-1)
            factors.append(guess / magnitude)
            print(f"seed {seed}: output scale 2^{scale_bits:g} -> |output| about {guess:g}; "
                  f"true max |output| on the calibration data {magnitude:.4g} (ratio {guess / magnitude:.2f})")
    print(f"activations: {len(errors)}, worst recovery error {max(errors):.1e} of the range width; "
          f"output magnitude ratios {min(factors):.2f}..{max(factors):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
