"""The plan report's worker memory (what a gateway holds once a bundle is loaded) against the
sizes SEAL itself gives its ciphertexts and keys, and the per-layer floor/ciphertext columns."""
from __future__ import annotations

import numpy as np

from protected_nn import zoo
from protected_nn.ckks.context import SecretCkks
from protected_nn.ckks.params import CkksParams
from protected_nn.compiler.planner import compile_graph
from protected_nn.frontend import load_onnx
from protected_nn.runtime.plan_sections import parse_plan
from protected_nn.runtime.report import render, worker_memory

PARAMS = CkksParams(n=8192, qi_sizes=(31, 26, 26, 26, 31), scale_bits=26)
HEADER_SLACK = 4096      # SEAL's headers and parameter ids, per object


def test_worker_memory_matches_seal_sizes():
    sk = SecretCkks.generate(PARAMS, {1, 4})
    levels = [0, 1, 3]
    raw = sum(len(sk.encrypt(np.ones(PARAMS.slots), 2.0 ** 26, lv).to_bytes("none")) for lv in levels)
    keys = len(sk.he.to_bytes_rotate_key("none")) + len(sk.he.to_bytes_relin_key("none"))
    mem = worker_memory(PARAMS, levels, [4, 4])          # both Galois keys whole (4 data primes)
    assert raw - len(levels) * HEADER_SLACK <= mem["weight_ciphertexts"] <= raw
    assert keys - 3 * HEADER_SLACK * 8 <= mem["keys"] <= keys
    assert mem["total"] == mem["weight_ciphertexts"] + mem["keys"]
    # a key kept for 2 data primes: what the gateway releases of it (test_key_levels) is the difference
    trimmed = worker_memory(PARAMS, levels, [2, 4])
    assert mem["keys"] - trimmed["keys"] == 28 * PARAMS.n * 8


def test_report_lists_floor_and_ciphertexts_per_layer():
    graph = load_onnx(zoo.crowd_cnn(0), calibration=None, poly_degree=4, input_range=(0.0, 1.0),
                      calibration_samples=2)
    plan = compile_graph(graph, 8)
    doc = parse_plan(plan.doc)
    rows = [dict(s, est_ms=0.0) for s in plan.layer_stats]
    data = {"ckks": {"ring_dimension": 16384, "slots": 8192, "qi_bits": [], "scale_bits": 0,
                     "log_q": 0, "max_log_q_128": 438, "security": ""},
            "encrypted": {"weight_ciphertexts": 0, "bias_ciphertexts": 0, "public_constants": []},
            "input_ciphertexts": 1, "rotation_steps": [], "layers": rows, "estimated_latency_ms": 0.0,
            "sizes_bytes": {"bundle_total": 0, "params": 0, "rotation_keys": 0, "relin_key": 0,
                            "public_key": 0},
            "worker_memory_bytes": worker_memory(doc.ckks.params, [w.level for w in doc.weights],
                                                 [len(doc.ckks.params.qi_sizes) - 1] * len(doc.rotation_steps)),
            "fidelity": {"result_bytes": 0, "latency_s": 0, "max_abs_error": 0, "samples": 1,
                         "max_rel_error": 0, "tolerance": 0.01}, "warnings": []}
    text = render(data)
    conv2 = next(line for line in text.splitlines() if line.startswith("bn2_5"))
    assert conv2.split()[-2:] == [f"{rows[2]['floor_products']:.1f}", "1"]
    assert "Worker memory:" in text
