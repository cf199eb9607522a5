"""Digests of the plans the compiler writes for every zoo model and the shipped model: a
refactor of the frontend or compiler that must not change any plan is checked by running this in
both trees and comparing (planning only, no encryption; a few minutes on one core).

    .venv/bin/python bench/plan_digests.py --out before.json          # in the old tree
    .venv/bin/python bench/plan_digests.py --compare before.json      # in the new one: exit 1 if any differs
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from protected_nn import zoo
from protected_nn.compiler.planner import compile_graph
from protected_nn.frontend.loader import load_onnx

ROOT = Path(__file__).resolve().parents[1]


def _encode(o):
    if isinstance(o, np.ndarray):
        return {"nd": o.tolist(), "dt": str(o.dtype)}
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o))


def models() -> dict:
    out = {name: getattr(zoo, name)(0) for name in
           ("tenseal_cnn", "cryptonets", "lenet5", "crowd_cnn", "wide_first_conv", "mobilenet_block")}
    for s in range(3):
        out[f"random_cnn{s}"] = zoo.random_cnn(s)
        out[f"engine_test_cnn{s}"] = zoo.engine_test_cnn(s)
        out[f"pooled_cnn{s}"] = zoo.pooled_cnn(s)
        out[f"pooled_cnn_hidden{s}"] = zoo.pooled_cnn(s, hidden=8)
    out["shipped"] = ROOT / "models" / "crowd_incident.onnx"
    return out


def digest(name: str, model) -> str:
    """sha256 of the plan document, its per-layer figures and every weight spec (an error's text
    when the model does not plan, so a changed refusal also shows)."""
    try:
        cal = np.load(ROOT / "models" / "crowd_incident.calibration.npy") if name == "shipped" else None
        plan = compile_graph(load_onnx(model, calibration=cal), 8)
        text = json.dumps({"doc": plan.doc, "stats": plan.layer_stats,
                           "w": [(w.values, w.level, w.scale, w.layer, w.kind) for w in plan.weights]},
                          default=_encode, sort_keys=True)
    except Exception as exc:  # noqa: BLE001 - the refusal itself is what is compared
        text = f"ERROR {type(exc).__name__} {exc}"
    return hashlib.sha256(text.encode()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write {model: digest} here")
    ap.add_argument("--compare", help="a file written by --out: exit 1 if any plan differs")
    args = ap.parse_args(argv)
    got = {}
    for name, model in models().items():
        got[name] = digest(name, model)
        print(f"{name:24s} {got[name][:16]}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=1) + "\n")
    if args.compare:
        want = json.loads(Path(args.compare).read_text())
        differ = sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))
        print(f"{len(got) - len(differ)} of {len(set(want) | set(got))} plans identical"
              + (f"; different: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
