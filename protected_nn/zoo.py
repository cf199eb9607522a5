"""Reference networks as ONNX models, built with onnx.helper: the benchmark targets and the
random CNNs the tests compare against onnxruntime.

Every builder returns an `onnx.ModelProto` (opset 17, batch 1, float32) whose weights come from a
seeded numpy RNG. Weights are drawn with fan-in scaling (std ~ 1/sqrt(fan_in)) so that for
inputs in [0, 1] every activation stays within roughly [-5, 5] - the range where low-degree
polynomial activations and CKKS scales behave. Initializer names mirror PyTorch's state_dict
keys (`conv1.weight`, `fc1.bias`, ...; Gemm uses transB=1 so weights are (out, in) like
torch.nn.Linear), so a trained network's weights saved with `np.savez(path, **state_dict)` can be
dropped in with `trained_like_weights`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MAX_ACTIVATION_VALUES = 4096  # random_cnn keeps every intermediate tensor at or below this size


class _Builder:
    """Accumulates nodes and initializers; names tensors so graphs stay readable in Netron."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def node(self, op: str, inputs: list[str], prefix: str, **attrs) -> str:
        out = self.fresh(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, name: str, c_in: int, c_out: int, k: int, stride: int,
             pads: tuple[int, int, int, int]) -> str:
        fan_in = c_in * k * k
        w = self.rng.normal(0.0, 1.0 / np.sqrt(fan_in), (c_out, c_in, k, k))
        b = self.rng.normal(0.0, 0.1, c_out)
        return self.node("Conv", [x, self.tensor(f"{name}.weight", w), self.tensor(f"{name}.bias", b)],
                         name, kernel_shape=[k, k], strides=[stride, stride], pads=list(pads))

    def gemm(self, x: str, name: str, n_in: int, n_out: int) -> str:
        w = self.rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_out, n_in))
        b = self.rng.normal(0.0, 0.1, n_out)
        return self.node("Gemm", [x, self.tensor(f"{name}.weight", w), self.tensor(f"{name}.bias", b)],
                         name, transB=1)

    def batchnorm(self, x: str, name: str, c: int) -> str:
        # Non-trivial statistics so that folding BN into the conv is actually exercised.
        scale = self.rng.uniform(0.6, 1.4, c)
        bias = self.rng.normal(0.0, 0.1, c)
        mean = self.rng.normal(0.0, 0.2, c)
        var = self.rng.uniform(0.5, 1.5, c)
        ins = [x] + [self.tensor(f"{name}.{p}", a) for p, a in
                     (("weight", scale), ("bias", bias), ("running_mean", mean), ("running_var", var))]
        return self.node("BatchNormalization", ins, name, epsilon=1e-5)

    def square(self, x: str) -> str:
        return self.node("Mul", [x, x], "square")

    def model(self, x_shape: tuple[int, ...], y: str, y_shape: tuple[int, ...], name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, list(y_shape))],
            initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="protected_nn.zoo")
        m.ir_version = 8  # opset 17 era; accepted by every onnxruntime >= 1.14
        onnx.checker.check_model(m)
        return m


def _rename_output(model: onnx.ModelProto, old: str, new: str = "output") -> onnx.ModelProto:
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    for out in model.graph.output:
        if out.name == old:
            out.name = new
    return model


def _finish(b: _Builder, y: str, x_shape, y_shape, name: str,
            weights: str | Path | dict | None) -> onnx.ModelProto:
    model = _rename_output(b.model(x_shape, y, y_shape, name), y)
    return trained_like_weights(model, weights) if weights is not None else model


def tenseal_cnn(seed: int = 0, weights: str | Path | dict | None = None) -> onnx.ModelProto:
    """TenSEAL's encrypted-convolution tutorial CNN (MNIST): 1x1x28x28 -> Conv 4 maps 7x7 stride 3,
    no padding (4x8x8 = 256) -> x*x -> Flatten -> Gemm 256->64 -> x*x -> Gemm 64->10 -> (1, 10)."""
    b = _Builder(np.random.default_rng(seed))
    h = b.conv("input", "conv1", 1, 4, 7, 3, (0, 0, 0, 0))
    h = b.square(h)
    h = b.node("Flatten", [h], "flatten", axis=1)
    h = b.gemm(h, "fc1", 256, 64)
    h = b.square(h)
    y = b.gemm(h, "fc2", 64, 10)
    return _finish(b, y, (1, 1, 28, 28), (1, 10), "tenseal_cnn", weights)


# CryptoNets pads only the top and left of the 28x28 image (to 29x29), so a 5x5 window with
# stride 2 gives exactly 13x13 outputs per map: 5 maps x 169 = 845 values, as in the paper.
CRYPTONETS_PADS = (1, 1, 0, 0)  # ONNX order: top, left, bottom, right


def cryptonets(seed: int = 0, weights: str | Path | dict | None = None) -> onnx.ModelProto:
    """CryptoNets (Gilad-Bachrach et al. 2016), MNIST: 1x1x28x28 -> Conv 5 maps 5x5 stride 2,
    pads (1,1,0,0) (5x13x13 = 845) -> x*x -> Flatten -> Gemm 845->100 -> x*x -> Gemm 100->10."""
    b = _Builder(np.random.default_rng(seed))
    h = b.conv("input", "conv1", 1, 5, 5, 2, CRYPTONETS_PADS)
    h = b.square(h)
    h = b.node("Flatten", [h], "flatten", axis=1)
    h = b.gemm(h, "fc1", 845, 100)
    h = b.square(h)
    y = b.gemm(h, "fc2", 100, 10)
    return _finish(b, y, (1, 1, 28, 28), (1, 10), "cryptonets", weights)


def _conv_out(size: int, k: int, stride: int, pad_total: int) -> int:
    return (size + pad_total - k) // stride + 1


def random_cnn(seed: int, *, in_channels: int = 2, size: int = 16, activation: str = "mixed",
               n_outputs: int = 10) -> onnx.ModelProto:
    """A small random CNN exercising what the compiler must fuse and pack:

        conv (random k/stride/pads) -> BatchNormalization -> act
        -> residual block: act(conv 3x3 same) + identity  (Add of two same-shape branches)
        -> AveragePool 2x2 stride 2 -> conv (random stride/pads) -> act -> Flatten -> Gemm head

    `activation`: "square" (x*x everywhere), "relu" (Relu everywhere) or "mixed" (chosen per
    layer from the seed). Every intermediate tensor has at most MAX_ACTIVATION_VALUES values.
    """
    if activation not in ("square", "relu", "mixed"):
        raise ValueError(f"activation must be 'square', 'relu' or 'mixed', not {activation!r}")
    rng = np.random.default_rng(seed)
    b = _Builder(rng)

    def act(x: str) -> str:
        kind = activation if activation != "mixed" else str(rng.choice(["square", "relu"]))
        return b.square(x) if kind == "square" else b.node("Relu", [x], "relu")

    c1 = int(rng.integers(2, 5))
    k1, s1 = [(3, 1), (3, 2), (5, 1), (5, 2)][int(rng.integers(4))]
    pads1 = tuple(int(p) for p in rng.integers(0, k1 // 2 + 1, 4))  # asymmetric pads allowed
    h1 = _conv_out(size, k1, s1, pads1[0] + pads1[2])
    w1 = _conv_out(size, k1, s1, pads1[1] + pads1[3])
    # Keep even spatial dims so the 2x2 pooling below is exact: grow the bottom/right pad.
    while h1 % 2:
        pads1 = (pads1[0], pads1[1], pads1[2] + 1, pads1[3])
        h1 = _conv_out(size, k1, s1, pads1[0] + pads1[2])
    while w1 % 2:
        pads1 = (pads1[0], pads1[1], pads1[2], pads1[3] + 1)
        w1 = _conv_out(size, k1, s1, pads1[1] + pads1[3])
    if c1 * h1 * w1 > MAX_ACTIVATION_VALUES:
        raise ValueError(f"first activation {c1}x{h1}x{w1} exceeds {MAX_ACTIVATION_VALUES} values")

    h = b.conv("input", "conv1", in_channels, c1, k1, s1, pads1)
    h = b.batchnorm(h, "bn1", c1)
    h = act(h)
    branch = b.conv(h, "res.conv", c1, c1, 3, 1, (1, 1, 1, 1))
    branch = act(branch)
    h = b.node("Add", [h, branch], "residual")
    h = b.node("AveragePool", [h], "avgpool", kernel_shape=[2, 2], strides=[2, 2])
    h2, w2 = h1 // 2, w1 // 2
    c3 = int(rng.integers(2, 7))
    s3 = int(rng.integers(1, 3))
    pads3 = (1, 1, 1, 1) if rng.random() < 0.5 else (0, 0, 0, 0)
    h3 = _conv_out(h2, 3, s3, pads3[0] + pads3[2])
    w3 = _conv_out(w2, 3, s3, pads3[1] + pads3[3])
    if h3 < 1 or w3 < 1:
        pads3, s3 = (1, 1, 1, 1), 1
        h3, w3 = h2, w2
    h = b.conv(h, "conv3", c1, c3, 3, s3, pads3)
    h = act(h)
    h = b.node("Flatten", [h], "flatten", axis=1)
    y = b.gemm(h, "fc", c3 * h3 * w3, n_outputs)
    model = _finish(b, y, (1, in_channels, size, size), (1, n_outputs), f"random_cnn_{seed}", None)
    return _limit_preactivations(model, seed)


_LINEAR_OPS = ("Conv", "Gemm", "BatchNormalization")


def _limit_preactivations(model: onnx.ModelProto, seed: int, target: float = 1.5,
                          n_samples: int = 8) -> onnx.ModelProto:
    """Rescale each Conv/Gemm/BatchNormalization (weight and bias together) so its output stays
    within +-target on uniform [0, 1] inputs. Random weights alone let x*x chains grow to 50+;
    with this, squares stay <= target**2 and a residual sum <= 2 * target**2 (~4.5).
    Layers are visited in graph order, so each one is measured after its inputs were fixed."""
    import onnxruntime as ort  # only needed here; keeps `import zoo` light

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    xs = [np.random.default_rng(seed + 1000 + i).random(shape, dtype=np.float32) for i in range(n_samples)]
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in _LINEAR_OPS:
            continue
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        peak = max(float(np.abs(sess.run(None, {"input": x})[0]).max()) for x in xs)
        if peak <= target:
            continue
        # Weight and bias are inputs 1 and 2 for all three ops (BN: scale, B).
        for name in node.input[1:3]:
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(target / peak), name))
    onnx.checker.check_model(model)
    return model


def trained_like_weights(model: onnx.ModelProto, weights: str | Path | dict) -> onnx.ModelProto:
    """A copy of `model` with initializers replaced by name from an .npz file (or a dict of
    arrays), e.g. a trained PyTorch state_dict saved with np.savez. Every replacement must keep
    the initializer's shape; unknown names are an error, names not given keep their values."""
    if isinstance(weights, (str, Path)):
        with np.load(weights) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        arrays = dict(weights)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {t.name: t for t in out.graph.initializer}
    unknown = sorted(set(arrays) - set(by_name))
    if unknown:
        raise ValueError(f"weights name no initializer of {model.graph.name}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(by_name))}")
    for name, array in arrays.items():
        old = by_name[name]
        array = np.asarray(array, dtype=np.float32)
        if tuple(old.dims) != array.shape:
            raise ValueError(f"weight {name}: shape {array.shape} does not match the model's {tuple(old.dims)}")
        old.CopyFrom(numpy_helper.from_array(array, name))
    onnx.checker.check_model(out)
    return out


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's initializers as numpy arrays, by name (used by bench/tenseal_ref.py)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write `model` to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def _avgpool(b: _Builder, x: str, k: int) -> str:
    return b.node("AveragePool", [x], "avgpool", kernel_shape=[k, k], strides=[k, k])


def lenet5(seed: int = 0) -> onnx.ModelProto:
    """LeNet-5 with square activations: 1x32x32 -> conv 6@5x5 -> x*x -> avgpool 2 -> conv 16@5x5
    -> x*x -> avgpool 2 -> 400-120 -> x*x -> 120-84 -> x*x -> 84-10 (issue 9's first target)."""
    b = _Builder(np.random.default_rng(seed))
    h = _avgpool(b, b.square(b.conv("input", "conv1", 1, 6, 5, 1, (0, 0, 0, 0))), 2)
    h = _avgpool(b, b.square(b.conv(h, "conv2", 6, 16, 5, 1, (0, 0, 0, 0))), 2)
    h = b.node("Flatten", [h], "flatten", axis=1)
    h = b.square(b.gemm(h, "fc1", 400, 120))
    h = b.square(b.gemm(h, "fc2", 120, 84))
    y = b.gemm(h, "fc3", 84, 10)
    model = _finish(b, y, (1, 1, 32, 32), (1, 10), "lenet5", None)
    return _limit_preactivations(model, seed)


def crowd_cnn(seed: int = 0, n_outputs: int = 2) -> onnx.ModelProto:
    """The 64x64 crowd CNN of issue 9: 2x64x64 -> three 3x3 stride-2 convs (8/16/32 channels,
    pad 1) each with BatchNorm and x*x -> global average pool -> dense to `n_outputs`."""
    b = _Builder(np.random.default_rng(seed))
    h, c = "input", 2
    for i, c_out in enumerate((8, 16, 32), start=1):
        h = b.square(b.batchnorm(b.conv(h, f"conv{i}", c, c_out, 3, 2, (1, 1, 1, 1)), f"bn{i}", c_out))
        c = c_out
    h = b.node("GlobalAveragePool", [h], "gap")
    h = b.node("Flatten", [h], "flatten", axis=1)
    y = b.gemm(h, "fc", 32, n_outputs)
    model = _finish(b, y, (1, 2, 64, 64), (1, n_outputs), "crowd_cnn", None)
    return _limit_preactivations(model, seed)


def wide_first_conv(seed: int = 0) -> onnx.ModelProto:
    """3x64x64 -> conv 16@3x3 stride 1 pad 1 (a 16x64x64 activation) -> x*x -> avgpool 4
    -> conv 16->16 3x3 stride 2 pad 1 -> x*x -> dense to 4."""
    b = _Builder(np.random.default_rng(seed))
    h = _avgpool(b, b.square(b.conv("input", "conv1", 3, 16, 3, 1, (1, 1, 1, 1))), 4)
    h = b.square(b.conv(h, "conv2", 16, 16, 3, 2, (1, 1, 1, 1)))
    h = b.node("Flatten", [h], "flatten", axis=1)
    y = b.gemm(h, "fc", 16 * 8 * 8, 4)
    model = _finish(b, y, (1, 3, 64, 64), (1, 4), "wide_first_conv", None)
    return _limit_preactivations(model, seed)


def mobilenet_block(seed: int = 0) -> onnx.ModelProto:
    """3x32x32 -> conv 8 3x3 stride 2 -> x*x -> depthwise 3x3 (group 8) -> x*x -> pointwise 1x1
    to 16 -> x*x -> avgpool 2 -> global pool -> dense to 3. Needs group > 1 in the frontend."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    h = b.square(b.conv("input", "conv1", 3, 8, 3, 2, (1, 1, 1, 1)))
    w = rng.normal(0.0, 1.0 / 3.0, (8, 1, 3, 3))
    h = b.node("Conv", [h, b.tensor("dw.weight", w), b.tensor("dw.bias", rng.normal(0, 0.1, 8))], "dw",
               kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], group=8)
    h = b.square(h)
    h = b.square(b.conv(h, "pw", 8, 16, 1, 1, (0, 0, 0, 0)))
    h = b.node("GlobalAveragePool", [_avgpool(b, h, 2)], "gap")
    h = b.node("Flatten", [h], "flatten", axis=1)
    y = b.gemm(h, "fc", 16, 3)
    model = _finish(b, y, (1, 3, 32, 32), (1, 3), "mobilenet_block", None)
    return _limit_preactivations(model, seed)


ENGINE_MODELS = {"lenet5": lenet5, "crowd_cnn": crowd_cnn, "wide_first_conv": wide_first_conv,
                 "mobilenet_block": mobilenet_block}


def engine_test_cnn(seed: int, *, size: int = 12, channels: int = 3) -> onnx.ModelProto:
    """A small CNN with the multi-ciphertext engine's cases: conv 3x3 (stride 1 or 2 by seed,
    pad 1) -> x*x -> residual join conv 3x3 + identity -> (avgpool 2 when stride 1) -> conv 3x3
    stride 2 -> x*x -> dense to 3. Kept small so the encrypted test runs in seconds."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    s1 = int(rng.integers(1, 3))
    h = b.square(b.conv("input", "conv1", 1, channels, 3, s1, (1, 1, 1, 1)))
    n = -(-size // s1)
    h = b.node("Add", [h, b.conv(h, "res", channels, channels, 3, 1, (1, 1, 1, 1))], "residual")
    if s1 == 1:
        h = _avgpool(b, h, 2)
        n //= 2
    c2 = int(rng.integers(2, 5))
    h = b.square(b.conv(h, "conv2", channels, c2, 3, 2, (1, 1, 1, 1)))
    n = -(-n // 2)
    h = b.node("Flatten", [h], "flatten", axis=1)
    y = b.gemm(h, "fc", c2 * n * n, 3)
    model = _finish(b, y, (1, 1, size, size), (1, 3), f"engine_test_cnn_{seed}", None)
    return _limit_preactivations(model, seed)


def pooled_cnn(seed: int, *, size: int = 16, in_channels: int = 1, hidden: int = 0) -> onnx.ModelProto:
    """conv (3x3 or 5x5, stride 1, pad 0-2) -> BatchNorm -> x*x -> AveragePool 2 -> conv 3x3
    (stride 1 or 2, pad 0 or 1) -> x*x -> AveragePool 2 or GlobalAveragePool [-> dense to
    `hidden` -> x*x] -> dense to 3: the pools the compiler may run as rotate-and-add sums
    (compiler/pooling.py), a hidden dense layer reading replicated input (replicate.py)."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    c1, k1 = int(rng.integers(2, 6)), int(rng.choice([3, 5]))
    p1 = int(rng.integers(0, k1 // 2 + 1))
    n = _conv_out(size, k1, 1, 2 * p1)          # even for an even size (odd kernel, stride 1)
    h = b.square(b.batchnorm(b.conv("input", "conv1", in_channels, c1, k1, 1, (p1,) * 4), "bn1", c1))
    h, n = _avgpool(b, h, 2), n // 2
    c2, s2, p2 = int(rng.integers(2, 9)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    h = b.square(b.conv(h, "conv2", c1, c2, 3, s2, (p2,) * 4))
    n = _conv_out(n, 3, s2, 2 * p2)
    if n % 2 == 0 and rng.random() < 0.6:
        h, feat = _avgpool(b, h, 2), c2 * (n // 2) ** 2
    else:
        h, feat = b.node("GlobalAveragePool", [h], "gap"), c2
    h = b.node("Flatten", [h], "flatten", axis=1)
    if hidden:
        h, feat = b.square(b.gemm(h, "fc0", feat, hidden)), hidden
    y = b.gemm(h, "fc", feat, 3)
    model = _finish(b, y, (1, in_channels, size, size), (1, 3), f"pooled_cnn_{seed}", None)
    return _limit_preactivations(model, seed)
