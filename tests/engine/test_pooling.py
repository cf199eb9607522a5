"""Average pools as rotate-and-add sums (compiler/pooling.py): the output map the compiler
derives is checked against a plain simulation of the rotations, the planner takes the sum where
it pays (LeNet-5's first pool) and keeps fusing where it does not, and random CNNs with pools
run under encryption against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import scipy.sparse as sp

from protected_nn import ir, zoo
from protected_nn.api import EdgeModel, OwnerModel, ProtectOptions, protect
from protected_nn.compiler import mapped_plan, planner
from protected_nn.compiler.pooling import pooled_map
from protected_nn.compiler.replicate import replicas
from protected_nn.compiler.structure import close_pattern
from protected_nn.compiler.tensor_map import input_map, polyphase_map
from protected_nn.frontend import load_onnx

SLOTS = 8192
TOL = 1e-2


def _pool_node(c, h, w, k):
    """A k x k stride-k window SUM over (c, h, w), as compiler/graph.py keeps it."""
    rows, cols = [], []
    for ch in range(c):
        for y in range(h // k):
            for x in range(w // k):
                for a in range(k):
                    for b in range(k):
                        rows.append((ch * (h // k) + y) * (w // k) + x)
                        cols.append((ch * h + y * k + a) * w + x * k + b)
    S = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(c * (h // k) * (w // k), c * h * w))
    S, geo = close_pattern(S, (1, c, h, w), (1, c, h // k, w // k))
    return ir.Linear("pool", ["x"], (1, S.shape[0]), weights=[S], bias=np.zeros(S.shape[0]),
                     geometries=[geo], pool=True), S


def _simulate(tm, tree, x):
    """What the gateway computes: the laid-out tensor through x + roll(x, -t) per shift."""
    padded = np.append(x, 0.0)
    cts = [padded[g] for g in tm.gather(SLOTS)] if tm.clean else None
    out = []
    for ct in cts:
        for t in tree:
            ct = ct + np.roll(ct, -t)
        out.append(ct)
    return out


@pytest.mark.parametrize("layout", ["top", "grid"])
def test_pooled_map_matches_the_rotations(layout):
    c, h, w, k = 3, 12, 12, 2
    node, S = _pool_node(c, h, w, k)
    if layout == "top":   # pooled phases on the top bits: 4 clean copies
        tm = polyphase_map((c, h, w), 2, 6, ("top", 2), SLOTS)
    else:                 # a plain grid: pooled values at the anchors, partial sums between
        tm = input_map((c, h, w), SLOTS)
    tree, out = pooled_map(node, tm, SLOTS)
    x = np.random.default_rng(0).normal(size=c * h * w)
    cts = _simulate(tm, tree, x)
    want = S @ x
    for ct, slot in out.all_copies():
        got = np.array([cts[a][b] for a, b in zip(ct, slot)])
        assert np.allclose(got, want)
    if layout == "top":
        assert out.clean and len(out.copies) == 3 and out.poly is not None
        held = np.zeros(SLOTS, bool)
        for _, slot in out.all_copies():
            held[slot] = True
        assert np.allclose(cts[0][~held], 0.0)      # clean: nothing outside the copies
    else:
        assert not out.clean and out.grid is not None and out.grid.col == 2


def test_pooled_map_refuses_a_window_split_over_ciphertexts():
    node, _ = _pool_node(1, 8, 8, 2)
    tm = polyphase_map((1, 8, 8), 2, 4, "ch", SLOTS)
    tm.ct = np.where(np.arange(tm.n) % 2 == 1, 1, 0)     # x odd in another ciphertext
    tm.n_cts = 2
    assert pooled_map(node, tm, SLOTS) is None


def test_replicas_are_shifted_clean_copies():
    """Each doubling adds copies in a new residue class of the reader's period, on free slots."""
    tm = polyphase_map((4, 5, 5), 1, 5, "ch", SLOTS)        # 100 values in 4 blocks of 32
    period = 128
    reps = replicas(tm, period, SLOTS)
    assert len(reps) >= 3
    x = np.random.default_rng(1).normal(size=tm.n)
    for tree, rep in reps:
        ct = _simulate(tm, tree, x)[0]
        residues = set()
        for _, slot in rep.all_copies():
            assert np.allclose(ct[slot], x)
            residues.add(int((slot[0] - tm.slot[0]) % period))
        assert len(residues) == 2 ** len(tree)
        held = np.zeros(SLOTS, bool)
        for _, slot in rep.all_copies():
            held[slot] = True
        assert np.allclose(ct[~held], 0.0)


def _plan(model):
    graph = load_onnx(model, calibration=None, poly_degree=4, input_range=(0.0, 1.0),
                      calibration_samples=2)
    return planner.compile_graph(graph, 8)


def test_lenet5_sums_its_first_pool():
    plan = _plan(zoo.lenet5(0))
    ops = [s["op"] for s in plan.doc["steps"]]
    assert ops.count("rotsum") >= 1
    stats = {s["layer"]: s for s in plan.layer_stats}
    conv2 = next(s for name, s in stats.items() if name.startswith("conv2"))
    assert conv2["floor_products"] < 30                  # the unfused 5x5 kernel's floor
    assert conv2["products"] <= 210                      # 400 with the pool fused into it
    fc1 = next(s for name, s in stats.items() if name.startswith("fc1"))
    assert fc1["products"] <= 64                          # 128 without shifted input copies
    assert sum(s["products"] for s in plan.layer_stats) <= 330


def test_crowd_cnn_keeps_its_global_pool_fused():
    """A pool that does not pay as a sum (the crowd CNN's global pool) plans as before."""
    plan = _plan(zoo.crowd_cnn(0))
    assert "rotsum" not in [s["op"] for s in plan.doc["steps"]]
    assert sum(s["products"] for s in plan.layer_stats) <= 160


def _always_sum(pool, tm, slots, level, cost, real=mapped_plan.pool_choice):
    """pool_choice taking the rotate-and-add sum whenever the layout allows one."""
    summed = pooled_map(pool, tm, slots) if tm is not None else None
    return (0.0, summed) if summed is not None else real(pool, tm, slots, level, cost)


@pytest.mark.parametrize("seed,force,hidden", [(0, False, 0), (5, False, 0), (2, True, 0),
                                               (3, True, 0), (4, False, 24), (5, False, 24)])
def test_pooled_cnn_matches_onnxruntime(seed, force, hidden, forced_mapped, monkeypatch):
    """Seeds 0 and 5: the planner sums the first pool by itself; 2 and 3: every pool that can
    be summed is (gapped grids, a second pool, a global pool), whatever the cost; with a hidden
    dense layer, 4 sums its global pool and 5 replicates the hidden layer's input."""
    if force:
        monkeypatch.setattr(mapped_plan, "pool_choice", _always_sum)
    model = zoo.pooled_cnn(seed, hidden=hidden)
    prot = protect(model, options=ProtectOptions(check_samples=1, progress=False))
    assert "rotsum" in [s["op"] for s in prot.artifacts.plan_json()["steps"]]
    if hidden and seed == 5:
        assert any(s["out"].endswith("~copies") for s in prot.artifacts.plan_json()["steps"])
    edge, owner = EdgeModel(prot.artifacts), OwnerModel(prot.artifacts, prot.secret_key)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed + 5).uniform(0, 1, (1, 1, 16, 16)).astype(np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    y = owner.decrypt(edge.infer(x))
    assert np.max(np.abs(y - ref)) / max(float(np.ptp(ref)), 1e-6) <= TOL
