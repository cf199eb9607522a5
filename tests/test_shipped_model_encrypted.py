"""The shipped model under encryption meets the metrics its card states for plaintext: on a
small held-out synthetic set, encrypted outputs equal onnxruntime's to well within the
tolerance, so every count and every incident decision is the same (training/eval_encrypted.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.eval_encrypted import evaluate_encrypted

MODEL = Path(__file__).resolve().parent.parent / "models" / "crowd_incident.onnx"


def test_shipped_model_encrypted_metrics_equal_plaintext():
    res = evaluate_encrypted(MODEL, n_sequences=2, stride=10)
    enc, plain = res["encrypted"], res["plaintext"]
    assert res["frames"] >= 15
    count_diff, logit_diff = res["max_abs_diff"]
    assert count_diff < 0.1, "encrypted people count differs from plaintext"
    assert logit_diff < 0.1, "encrypted incident logit differs from plaintext"
    assert abs(enc["count_mae"] - plain["count_mae"]) < 0.05
    assert enc["incident_precision"] == plain["incident_precision"] or np.isnan(plain["incident_precision"])
    assert enc["incident_recall"] == plain["incident_recall"] or np.isnan(plain["incident_recall"])
    assert res["payload_bytes"] <= 64 * 1024
