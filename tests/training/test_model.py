"""The shipped model: loads in onnxruntime, carries its metadata, is HE-friendly, reads its count
from the frame alone, and meets the real-data and rendered-scene metrics its model card states
(re-measured here on the held-out Mall frames 641-800 and the quick rendered set)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from training import mall
from training.eval import QUICK_SEQUENCES, evaluate, model_input_size, predict_onnx
from training.eval_real import real_metrics

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "crowd_incident.onnx"
METRICS = ROOT / "models" / "crowd_incident.metrics.json"
# Bounds on real frames the model never saw: the count error the card states (2.32) plus a
# margin (issue 11's target is 3.2, its moonshot 2.5); the calm-frame incident rate at issue 11's
# target (measured: 1 of 160 frames without motion, 0 with).
BOUND_REAL_MAE = 2.6
TARGET_CALM_INCIDENT_RATE = 0.02


def test_shipped_model_runs_in_onnxruntime_with_one_1x2_output():
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (inp,), outs = sess.get_inputs(), sess.get_outputs()
    assert inp.shape[:2] == [1, 2] and len(inp.shape) == 4
    assert len(outs) == 1 and outs[0].shape == [1, 2]
    y = sess.run(None, {inp.name: np.zeros(inp.shape, np.float32)})[0]
    assert y.shape == (1, 2) and np.isfinite(y).all()


def test_shipped_model_metadata():
    model = onnx.load(str(MODEL))
    meta = {p.key: p.value for p in model.metadata_props}
    h, w = model_input_size(MODEL)
    assert json.loads(meta["fhe_edge.input"]) == {"shape": [1, 2, h, w], "channels": "gray+motion", "scale": 1 / 255,
                                                  "mean": 0, "std": 1, "resize": "area"}
    assert json.loads(meta["fhe_edge.outputs"]) == [
        {"name": "crowd_count", "index": 0, "kind": "count"},
        {"name": "incident", "index": 1, "kind": "logit"}]
    assert json.loads(meta["fhe_edge.motion"])["frame_interval_s"] == 0.1
    card = meta["fhe_edge.model_card"]
    assert "Mall dataset" in card and "research use only" in card and "synthetic" in card
    assert model.opset_import[0].version == 17


def test_shipped_model_is_he_friendly():
    model = onnx.shape_inference.infer_shapes(onnx.load(str(MODEL)))
    ops = [n.op_type for n in model.graph.node]
    assert set(ops) <= {"Conv", "Mul", "AveragePool", "Flatten", "Gemm"}, ops
    squares = [n for n in model.graph.node if n.op_type == "Mul"]
    assert all(n.input[0] == n.input[1] for n in squares)
    for vi in list(model.graph.value_info) + list(model.graph.output):
        size = int(np.prod([d.dim_value for d in vi.type.tensor_type.shape.dim]))
        assert 0 < size <= 4096, f"{vi.name} has {size} values: more than one ciphertext"


def test_count_does_not_depend_on_the_motion_channel():
    size = model_input_size(MODEL)
    s = mall.load(size, "validation")
    x = mall.inputs(s, motion=False)[:20]
    noisy = x.copy()
    noisy[:, 1] = np.random.default_rng(0).uniform(0, 1, noisy[:, 1].shape)   # any motion at all
    a, b = predict_onnx(MODEL, x), predict_onnx(MODEL, noisy)
    np.testing.assert_allclose(a[:, 0], b[:, 0], atol=1e-4)
    assert np.abs(a[:, 1] - b[:, 1]).max() > 1e-3, "motion no longer reaches the incident output"


def test_shipped_model_meets_its_real_data_claims():
    """Held-out real frames (Mall 641-800): the count error and the calm-frame incident rate are
    at most what the card states (plus float noise across machines) and within fixed bounds."""
    stated = json.loads(METRICS.read_text())["real_validation"]
    got = real_metrics(MODEL)
    assert got["frames"] == stated["frames"] == 160 and got["first_frame"] == 641
    for mode in ("no_motion", "motion_0.5s"):
        assert got[mode]["count_mae"] <= stated[mode]["count_mae"] + 0.02
        assert got[mode]["count_mae"] <= BOUND_REAL_MAE
        assert got[mode]["incident_positive_rate"] <= stated[mode]["incident_positive_rate"] + 1e-9
        assert got[mode]["incident_positive_rate"] <= TARGET_CALM_INCIDENT_RATE
    # far better than answering the training frames' mean count (an MAE of about 7.3 here)
    train_mean = float(mall.load(model_input_size(MODEL), "train").count.mean())
    baseline = float(np.abs(mall.load(model_input_size(MODEL), "validation").count - train_mean).mean())
    assert got["no_motion"]["count_mae"] < 0.5 * baseline


def test_shipped_model_meets_its_stated_rendered_scene_metrics():
    stated = json.loads(METRICS.read_text())["quick_check"]
    got = evaluate(MODEL, QUICK_SEQUENCES, 160, 120, stated["frames_per_sequence"])
    assert got["frames"] == stated["frames"]
    # same seeds, same renderer: only OpenCV/float differences across machines can move these
    assert got["incident_precision"] >= stated["incident_precision"] - 0.02
    assert got["incident_recall"] >= stated["incident_recall"] - 0.02
    for kind, recall in stated["incident_recall_by_kind"].items():
        assert got["incident_recall_by_kind"][kind] >= recall - 0.02


def test_training_smoke_exports_what_it_trained(tmp_path):
    pytest.importorskip("torch")
    from training.dataset import synthetic_set
    from training.export import write_onnx
    from training.fit import train
    from training.model import ARCHS, folded_weights
    from training.train import check_export, real_set

    arch = ARCHS["32"]
    real = real_set(arch)
    sub = type(real)(real.gray[:40], real.prev[:40], real.count[:40], real.density[:40])
    synth = synthetic_set(range(3), n_frames=12, width=64, height=48, workers=1)
    net = train(arch, sub, synth, epochs=1, log=lambda m: None)
    path = write_onnx(folded_weights(net), arch, tmp_path / "m.onnx")
    assert check_export(net, path, np.concatenate([synth.x[:4], mall.inputs(mall.load((32, 32), "train"), True)[:4]])) < 1e-4


def test_train_command_on_real_footage_only(tmp_path):
    pytest.importorskip("torch")
    import cv2
    from training.scenes import render_sequence
    from training.train import main

    footage = tmp_path / "footage"
    footage.mkdir()
    frames, labels = render_sequence(2, 9, 96, 72, "crowd")     # stands in for camera frames
    rows = ["frame,count,incident,sequence"]
    for i, (f, lab) in enumerate(zip(frames, labels)):
        cv2.imwrite(str(footage / f"{i}.png"), f)
        rows.append(f"{i}.png,{lab['count']},{int(lab['incident'])},clip{i // 5}")
    (footage / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "real.onnx"
    assert main(["--sequences", "0", "--no-mall", "--footage", str(footage), "--epochs", "1", "--out", str(out)]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 2, 32, 32), np.float32)})[0].shape == (1, 2)
