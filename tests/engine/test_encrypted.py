"""Multi-ciphertext engine under encryption against onnxruntime (small CNNs with strides 1 and 2,
padding, a residual join, pooling), and the gateway side loading no compiler code."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from protected_nn import zoo
from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect

TOL = 1e-2


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module", params=[0, 3])
def protected(request, forced_mapped):
    model = zoo.engine_test_cnn(request.param)
    prot = protect(model, options=ProtectOptions(check_samples=1))
    return model, prot


def test_matches_onnxruntime(protected):
    model, prot = protected
    assert any("floor_products" in s for s in prot.report["layers"])
    edge, owner = EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)
    x = np.random.default_rng(11).uniform(0, 1, (1, 1, 12, 12)).astype(np.float32)
    ref = _ort(model, x)
    y = owner.decrypt(edge.infer(x))
    assert np.max(np.abs(y - ref)) / max(float(np.ptp(ref)), 1e-6) <= TOL


def test_gateway_loads_no_compiler(protected, tmp_path):
    _, prot = protected
    for name, blob in prot.artifacts.as_members().items():
        (tmp_path / name).write_bytes(blob)
    code = textwrap.dedent(f"""
        import sys, pathlib, numpy as np
        from protected_nn.artifacts import ModelArtifacts
        from protected_nn.api import EdgeModel
        d = pathlib.Path({str(tmp_path)!r})
        art = ModelArtifacts.from_members({{p.name: p.read_bytes() for p in d.iterdir()}})
        edge = EdgeModel(art)
        edge.infer(np.zeros(edge.input_shape, np.float32))
        print(",".join(m for m in sys.modules if m.startswith("protected_nn.compiler")
                       or m.startswith("protected_nn.frontend")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_black_frame_and_plain_first_layer(protected):
    """The frame stays in clear (no input encryption); an all-zero frame still runs, and two
    results for the same frame differ (re-randomized by a fresh encryption of zero)."""
    model, prot = protected
    assert prot.artifacts.plan_json()["input"]["plain"] is True
    edge, owner = EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)
    x = np.zeros((1, 1, 12, 12), np.float32)
    a, b = edge.infer(x), edge.infer(x)
    assert a != b
    ref = _ort(model, x)
    assert np.max(np.abs(owner.decrypt(a) - ref)) / max(float(np.ptp(ref)), 1e-3) <= TOL
