"""`backend-decryptor adapt` checks where it will write (--out, its .calibration.npy, --report-json)
and what it reads (--data, --labels) before it trains, not after minutes of training (audit after
issue 16). A folder that does not exist yet is made, as before."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

from backend_decryptor.adapt import AdaptError  # noqa: E402
from backend_decryptor.adapt.run import adapt  # noqa: E402
from backend_decryptor.cli import main  # noqa: E402


def tiny_cnn(path):
    """Conv 3x3 (2 channels) + Relu -> Flatten -> Gemm 128->3: one activation to adapt."""
    rng = np.random.default_rng(0)
    init = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Flatten", ["r1"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["output"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])],
        [init("w1", rng.normal(0, 0.5, (2, 1, 3, 3))), init("b1", rng.normal(0, 0.1, 2)),
         init("w2", rng.normal(0, 0.3, (3, 128))), init("b2", rng.normal(0, 0.1, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def blobs(n: int, seed: int) -> np.ndarray:
    """Smooth synthetic 8x8 images (two Gaussian blobs each), shaped (N, 1, 1, 8, 8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:8, 0:8]
    c, w, a = rng.uniform(0, 8, (n, 2, 2)), rng.uniform(1.0, 2.5, (n, 2)), rng.uniform(0.3, 1.0, (n, 2))
    img = sum(a[:, k, None, None] * np.exp(-((yy - c[:, k, 0, None, None]) ** 2 + (xx - c[:, k, 1, None, None]) ** 2)
                                           / (2 * w[:, k, None, None] ** 2)) for k in range(2))
    return img[:, None, None].astype(np.float32)


@pytest.fixture
def owner(tmp_path):
    model = tiny_cnn(tmp_path / "tiny.onnx")
    x = blobs(120, 1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(120) % 3)
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path, model


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["adapt", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_out_that_cannot_be_written_fails_before_training(owner, capsys):
    d, model = owner
    out = d / "a-file" / "adapted.onnx"
    code, stdout, stderr = run(capsys, model, "--data", d / "x.npy", "--out", out, "--epochs", 1)
    assert code == 2
    assert stderr.strip() == f"error: --out {out}: cannot create: {d / 'a-file'} is not a folder", stderr
    assert "adapt:" not in stdout and "epoch" not in stdout          # nothing trained
    assert sorted(p.name for p in d.iterdir()) == ["a-file", "tiny.onnx", "x.npy", "y.npy"]


@pytest.mark.parametrize("where", ["a-file/r.json", "folder"])
def test_a_report_that_cannot_be_written_fails_before_training(owner, capsys, where):
    d, model = owner
    (d / "folder").mkdir()
    code, stdout, stderr = run(capsys, model, "--data", d / "x.npy", "--out", d / "adapted.onnx",
                               "--report-json", d / where, "--epochs", 1)
    assert code == 2 and stderr.startswith(f"error: --report-json {d / where}: "), stderr
    assert "adapt:" not in stdout and not (d / "adapted.onnx").exists()


def test_the_calibration_beside_out_is_checked_too(owner):
    d, model = owner
    (d / "adapted.calibration.npy").mkdir()                 # a folder where the calibration goes
    with pytest.raises(AdaptError, match=r"--out .*adapted.calibration.npy: is a folder"):
        adapt(model, np.load(d / "x.npy"), out=d / "adapted.onnx", epochs=1, log=pytest.fail)


def test_unreadable_labels_fail_before_training(owner, capsys):
    d, model = owner
    (d / "y.txt").write_text("0 1 2\n")
    code, stdout, stderr = run(capsys, model, "--data", d / "x.npy", "--labels", d / "y.txt",
                               "--out", d / "adapted.onnx")
    assert code == 2 and "labels file" in stderr and "is a text file" in stderr, stderr
    assert "adapt:" not in stdout


def test_outputs_go_into_a_folder_made_for_them_and_nothing_else(owner, capsys):
    d, model = owner
    out = d / "new" / "deeper" / "adapted.onnx"
    report = d / "reports" / "r.json"
    code, stdout, stderr = run(capsys, model, "--data", d / "x.npy", "--out", out,
                               "--report-json", report, "--epochs", 5, "--seed", 1)
    assert code == 0, stderr
    assert onnx.load(str(out)).graph.node and np.load(out.with_suffix(".calibration.npy")).shape[1:] == (1, 1, 8, 8)
    assert json.loads(report.read_text())["out"] == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["adapted.calibration.npy", "adapted.onnx"]
    assert [p.name for p in report.parent.iterdir()] == ["r.json"]
