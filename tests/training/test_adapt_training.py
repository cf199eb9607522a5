"""adapt's training rules (issue 10, third pass): the warm-up + cosine schedule, the epoch kept
by the held-back tenth's loss, partial labels (NaN = unknown), weights that are 0 in the
original staying 0, and a far-vertex channel (a
ReLU carrying a large linear value, as a count does) that must still be protected exactly."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

from backend_decryptor.adapt import AdaptError  # noqa: E402
from backend_decryptor.adapt.run import adapt  # noqa: E402
from backend_decryptor.adapt.train import lr_factor  # noqa: E402


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def mlp(path, *, w1=None, b1=None, seed=0):
    """Flatten(1x4x4) -> Gemm 16->6 -> Relu -> Gemm 6->2: a regressor with two outputs."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (6, 16)) if w1 is None else w1
    b1 = rng.normal(0, 0.2, 6) if b1 is None else b1
    nodes = [helper.make_node("Flatten", ["input"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["output"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])],
        [_init("w1", w1), _init("b1", b1), _init("w2", rng.normal(0, 0.5, (2, 6))), _init("b2", np.zeros(2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path, x):
    """onnxruntime on each row of x (batch 1)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"input": x[i:i + 1]})[0][0] for i in range(len(x))])


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(1).uniform(0, 1, (200, 1, 4, 4)).astype(np.float32)


def test_learning_rate_warms_up_then_decays_to_zero():
    f = [lr_factor(s, 100, 10) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)      # linear warm-up
    assert all(a < b for a, b in zip(f[:9], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))                     # then only down
    assert f[55] == pytest.approx(0.5, abs=1e-9) and f[100] == pytest.approx(0.0, abs=1e-9)


def _held_back_loss(report, original, adapted, x):
    """The distillation loss on the held-back inputs, recomputed from the two ONNX files."""
    idx = np.array(report["held_back_indices"])
    train = np.setdiff1d(np.arange(len(x)), idx)
    var = np.maximum(run(original, x[train]).var(axis=0), 1e-8)
    return float(((run(adapted, x[idx]) - run(original, x[idx])) ** 2 / var).mean())


def test_the_epoch_kept_is_the_one_with_the_lowest_held_back_loss(tmp_path, data):
    model = mlp(tmp_path / "m.onnx")
    # a learning rate high enough that the held-back loss does not fall every epoch
    res = adapt(model, data, out=tmp_path / "a.onnx", epochs=8, lr=3e-2, seed=2, log=lambda m: None)
    hist = res.report["history"]
    scores = [h["held_back"] for h in hist]
    best = int(np.argmin(scores)) + 1
    assert res.report["kept_epoch"] == best and [h["epoch"] for h in hist if h["kept"]] == [best]
    assert res.report["loss_after"] == pytest.approx(scores[best - 1], rel=1e-4)
    assert _held_back_loss(res.report, model, tmp_path / "a.onnx", data) == pytest.approx(scores[best - 1], rel=1e-3)
    last = adapt(model, data, out=tmp_path / "b.onnx", epochs=8, lr=3e-2, seed=2, log=lambda m: None,
                 train_options={"keep_best": False})
    assert last.report["kept_epoch"] == 8
    assert last.report["loss_after"] == pytest.approx(scores[-1], rel=1e-4)   # same run, last epoch


def test_partial_labels_nan_is_unknown(tmp_path, data):
    model = mlp(tmp_path / "m.onnx")
    out = run(model, data)
    y = np.stack([out[:, 0] + 0.1, np.full(len(data), np.nan)], 1).astype(np.float32)
    y[::3, 0] = np.nan                      # some counts unknown too
    res = adapt(model, data, y, out=tmp_path / "a.onnx", epochs=3, log=lambda m: None)
    hist = res.report["history"]
    assert all(np.isfinite(h["labels"]) and h["labels"] > 0 for h in hist)
    m = res.report["held_back"]
    idx = np.array(res.report["held_back_indices"])
    known = idx[~np.isnan(y[idx, 0])]
    assert m["mae_original"][1] is None and m["mae_adapted"][1] is None
    assert m["mae_original"][0] == pytest.approx(0.1, abs=1e-4)
    assert m["mae_adapted"][0] == pytest.approx(np.abs(run(tmp_path / "a.onnx", data[known])[:, 0] - y[known, 0]).mean(),
                                                rel=1e-4)
    with pytest.raises(AdaptError, match="every target is NaN"):
        adapt(model, data, np.full((len(data), 2), np.nan), out=tmp_path / "c.onnx", epochs=1, log=lambda m: None)
    bad = y.copy()
    bad[0, 0] = np.inf
    with pytest.raises(AdaptError, match="infinite"):
        adapt(model, data, bad, out=tmp_path / "c.onnx", epochs=1, log=lambda m: None)


def test_weights_zero_in_the_original_stay_zero(tmp_path, data):
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.5, (6, 16))
    w1[:3, 8:] = 0.0                        # units 0-2 do not read the lower half of the input
    model = mlp(tmp_path / "m.onnx", w1=w1)
    adapt(model, data, out=tmp_path / "a.onnx", epochs=3, lr=1e-2, log=lambda m: None)
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    assert np.all(got["w1"][:3, 8:] == 0.0)
    assert not np.allclose(got["w1"][3:], w1[3:].astype(np.float32))      # the rest was trained
    adapt(model, data, out=tmp_path / "b.onnx", epochs=3, lr=1e-2, log=lambda m: None,
          train_options={"keep_zeros": False})
    free = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    assert np.any(free["w1"][:3, 8:] != 0.0)


def test_a_unit_carrying_a_large_linear_value_is_protected_exactly(tmp_path, data):
    """Unit 0 is always far on the linear side of its ReLU (inputs ~50, like a count carried
    through a ReLU pair) and is output 0 itself: its fitted polynomial is nearly linear, its
    vertex thousands of half-widths away, and w2 (x + s)^2 + c overflowed the result's prime
    before c cancelled it (protect refused the model). Training keeps every vertex within
    MAX_VERTEX half-widths, so the export is exact and protect runs it."""
    from backend_decryptor.adapt.train import MAX_VERTEX
    from protected_nn import api
    rng = np.random.default_rng(4)
    w1 = rng.normal(0, 0.5, (6, 16))
    w1[0] = 5.0
    model = onnx.load(str(mlp(tmp_path / "m.onnx", w1=w1, b1=np.concatenate([[30.0], rng.normal(0, 0.2, 5)]))))
    w2 = np.zeros((2, 6), np.float32)
    w2[0, 0], w2[1, 1:] = 1.0, rng.normal(0, 0.5, 5)
    next(t for t in model.graph.initializer if t.name == "w2").CopyFrom(_init("w2", w2))
    onnx.save(model, str(tmp_path / "m.onnx"))
    res = adapt(tmp_path / "m.onnx", data, out=tmp_path / "a.onnx", epochs=3, log=lambda m: None)
    rec = res.report["activations"][0]
    assert rec["form"] == "completed square"                   # nothing moved at export
    inits = {t.name: numpy_helper.to_array(t).reshape(-1) for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    (lo, hi), mid = rec["fit_range"][0], sum(rec["fit_range"][0]) / 2
    vertex = -inits["relu1_adapt_shift"][0]                     # the square is of (x - vertex)
    assert abs(vertex - mid) <= MAX_VERTEX * (hi - lo) / 2 * (1 + 1e-4)
    assert abs(vertex - mid) > 2 * (hi - lo) / 2                # still nearly linear: the bound acts
    prot = api.protect(tmp_path / "a.onnx")
    assert prot.report["fidelity"]["max_rel_error"] <= 1e-2
    edge, owner = api.EdgeModel(prot.artifacts), api.OwnerModel(prot.artifacts, prot.secret_key)
    plain = run(tmp_path / "a.onnx", data)
    enc = np.stack([owner.decrypt(edge.infer(xi[None])).reshape(-1) for xi in data[:3]])
    assert np.abs(enc - plain[:3]).max() <= 1e-2 * (plain.max() - plain.min())


def test_the_benchs_relu_crowd_model_is_the_shipped_architecture_with_relu(tmp_path):
    """bench/adapt_models: the ReLU version trained by the shipped loop (a few steps here) and
    written as the owner's plain graph computes what the net computes (count and logit carried
    through the hidden ReLU as relu(L) - relu(-L)) and keeps the count blind to motion."""
    import torch
    from bench import adapt_models as am
    from training.model import Arch
    from training.train import real_set
    arch = Arch()
    net = am.train_crowd_relu(arch, real_set(arch), None, epochs=1, seed=0, log=lambda m: None)
    assert type(net).__name__ == "CrowdReluNet" and float(net.count_curve) == 0.0
    path = am.to_onnx(am.crowd_relu_sequential(net), (1, 2, 32, 32), tmp_path / "relu.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Relu") == 2 and "Mul" not in ops
    x = np.random.default_rng(0).uniform(0, 1, (6, 2, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = run(path, x)
    assert np.abs(got - want).max() <= 1e-3 * (1 + np.abs(want).max())
    moved = x.copy()
    moved[:, 1] = np.random.default_rng(1).uniform(0, 1, (6, 32, 32))     # other motion
    assert np.allclose(run(path, moved)[:, 0], got[:, 0], atol=1e-4)
