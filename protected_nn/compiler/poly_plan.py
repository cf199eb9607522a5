"""Planning a polynomial activation: powers by repeated squaring/products, then one combination
with plaintext coefficients (public approximation constants, not trained parameters)."""
from __future__ import annotations

import numpy as np

from protected_nn.compiler.state import PlanState
from protected_nn.errors import PlanError


def trim_coeffs(coeffs) -> np.ndarray:
    """Coefficients that round to zero at the plaintext scale would make SEAL produce a
    "transparent" ciphertext (an error): drop them, the loss is below the encoding precision."""
    c = np.asarray(coeffs, float).copy()
    c[1:][np.abs(c[1:]) < 1e-9 * max(1e-300, float(np.max(np.abs(c[1:])) if c.size > 1 else 0))] = 0.0
    return c


def plan_poly(node, states, steps, plan, drop_prime, delta):
    """Powers by repeated squaring/products, then one plaintext-coefficient combination.
    `delta` is the scale the output returns to (smaller for the model's result)."""
    src = states[node.inputs[0]]
    coeffs = trim_coeffs(node.coeffs)
    if not np.any(coeffs[1:]):
        raise PlanError(f"activation {node.name} fits to a constant: nothing to evaluate")
    deg = int(np.max(np.nonzero(coeffs)[0]))
    level0 = src.level
    pw_level = {1: level0}
    pw_scale = {1: src.scale}
    recipe = []
    for k in range(2, deg + 1):
        a, b = (k // 2, k // 2) if k % 2 == 0 else (k - 1, 1)
        lvl = max(pw_level[a], pw_level[b])
        q = drop_prime(lvl)
        pw_level[k] = lvl + 1
        pw_scale[k] = pw_scale[a] * pw_scale[b] / q
        recipe.append([k, a, b, lvl])
    top = max(pw_level.values())
    q = drop_prime(top)
    t_scale = delta * q
    terms = [[k, float(coeffs[k]), t_scale / pw_scale[k]] for k in range(1, deg + 1) if coeffs[k] != 0]
    lay = src.layout
    steps.append({"op": "poly", "src": node.inputs[0], "out": node.name, "recipe": recipe,
                  "top": top, "terms": terms, "c0": float(coeffs[0]), "c0_scale": t_scale,
                  "layout": lay.to_dict() if lay is not None else None})
    plan.layer_stats.append({"layer": node.name, "op": f"poly deg {deg} ({node.op})", "level": top + 1,
                             "shape": [node.size, node.size],
                             "products": len(recipe) + len(terms), "rotations": 0,
                             "relins": len(recipe), "sources": node.sources,
                             "fit_range": list(node.fit_range), "fit_max_error": node.fit_max_error})
    return PlanState(lay, top + 1, t_scale / q, src.tmap)
