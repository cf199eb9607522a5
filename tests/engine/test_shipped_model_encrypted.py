"""The shipped model under encryption on real frames it never saw (Mall 641-800): encrypted
outputs equal onnxruntime's within 1e-2 of the output range, so the count error is the plaintext
one and no incident decision changes (training/eval_encrypted.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.eval_encrypted import evaluate_encrypted_real

MODEL = Path(__file__).resolve().parents[2] / "models" / "crowd_incident.onnx"


def test_shipped_model_encrypted_equals_plaintext_on_real_frames():
    res = evaluate_encrypted_real(MODEL, stride=16)
    assert res["frames"] >= 10
    enc, plain = np.asarray(res["encrypted_outputs"]), np.asarray(res["plaintext_outputs"])
    rel = np.abs(enc - plain).max(axis=0) / res["output_range"]
    assert (rel <= 1e-2).all(), f"encrypted differs from plaintext by {rel} of the output range"
    assert abs(res["encrypted"]["count_mae"] - res["plaintext"]["count_mae"]) < 0.05
    assert ((enc[:, 1] > 0) == (plain[:, 1] > 0)).all(), "an incident decision changed under encryption"
    assert res["plaintext"]["count_mae"] < 4.0, "the count on real frames is off (see tests/training/test_model.py)"
    assert res["payload_bytes"] <= 64 * 1024
