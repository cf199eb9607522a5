"""Fidelity self-check run by `protect`: the owner holds the secret key, so it can compare the
encrypted path with onnxruntime on calibration inputs before anything is stored or deployed."""
from __future__ import annotations

import time

import numpy as np


def output_range(refs: np.ndarray) -> float:
    span = float(np.max(refs) - np.min(refs)) if refs.size else 0.0
    return span if span > 1e-6 else max(1e-6, float(np.max(np.abs(refs))) if refs.size else 1.0)


def fidelity_check(make_edge, make_owner, inputs: np.ndarray, refs: np.ndarray) -> dict:
    """`make_edge()` / `make_owner()` build the gateway and backend sides (passed in, so this
    module does not import the facade that imports it)."""
    t0 = time.perf_counter()
    edge = make_edge()
    load_s = time.perf_counter() - t0
    owner = make_owner()
    errs, lat, sizes, outs = [], [], [], []
    for x, ref in zip(inputs, refs):
        t = time.perf_counter()
        payload = edge.infer(x)
        lat.append(time.perf_counter() - t)
        sizes.append(len(payload))
        y = owner.decrypt(payload)
        outs.append(y)
        errs.append(float(np.max(np.abs(y - ref))))
    rng = output_range(refs)
    return {"samples": len(errs), "max_abs_error": max(errs), "output_range": rng,
            "max_rel_error": max(errs) / rng, "latency_s": float(np.median(lat)),
            "result_bytes": max(sizes), "edge_load_s": load_s}
