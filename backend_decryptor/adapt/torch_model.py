"""The ONNX graph as a PyTorch module, batched on axis 0, for the op table adapt accepts.

Why our own converter and not onnx2torch: onnx2torch 1.5.15 (the current release) imports
torchvision at import time, which does not exist for torch 2.13 here; and adapt must write the
trained values back into the owner's own ONNX graph (names, opset, metadata kept), which an
interpreter over that graph does directly: every trainable initializer is one Parameter under
its ONNX name, and export.py replaces exactly those initializers and the replaced nodes.

`mode` "original" computes the model as given (checked against onnxruntime before training);
"adapted" uses the polynomial activations in `acts` (the original function for an activation
not in it yet) and average pooling for MaxPool.
"""
from __future__ import annotations

import numpy as np
import onnx

from backend_decryptor.adapt import AdaptError, require_torch
from backend_decryptor.adapt.onnx_graph import ACTIVATIONS, OnnxGraph, attributes

torch = require_torch()
F = torch.nn.functional

# initializer inputs that are trained weights (by op, input position); statistics, exponents,
# divisors and shape constants stay as they are
_TRAINED_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2),
                   "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1)}
_VIEWS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def _key(name: str) -> str:
    return "p" + name.encode().hex()      # ParameterDict keys may not contain '.'


class OnnxModule(torch.nn.Module):
    def __init__(self, g: OnnxGraph):
        super().__init__()
        self.g = g
        self.mode = "original"
        self.capture: dict | None = None         # activation name -> list of its inputs, when set
        trained = {n.input[i] for n in g.compute for i in _TRAINED_INPUTS.get(n.op_type, ())
                   if i < len(n.input) and n.input[i] in g.initializers
                   and np.issubdtype(g.constants[n.input[i]].dtype, np.floating)}
        self.trained_names = sorted(trained)
        self.params = torch.nn.ParameterDict({
            _key(n): torch.nn.Parameter(torch.tensor(np.asarray(g.constants[n], np.float32)))
            for n in self.trained_names})
        self._fixed = {n: torch.tensor(np.asarray(v, np.float32)) for n, v in g.constants.items()
                       if np.issubdtype(np.asarray(v).dtype, np.floating) and n not in trained}
        self.acts = torch.nn.ModuleDict()
        for node in g.compute:
            _check_node(node, g)

    def value(self, name: str, env: dict):
        if name in env:
            return env[name]
        if name in self.trained_names:
            return self.params[_key(name)]
        if name in self._fixed:
            return self._fixed[name]
        return torch.tensor(np.asarray(self.g.constants[name]))

    def trained_values(self) -> dict[str, np.ndarray]:
        return {n: self.params[_key(n)].detach().numpy() for n in self.trained_names}

    def forward(self, x):
        env = {self.g.input_name: x}
        for node in self.g.compute:
            env[node.output[0]] = self._run(node, env, x.shape[0])
        return env[self.g.output_name]

    def _run(self, node, env, batch):
        op, a = node.op_type, attributes(node)
        ins = [self.value(i, env) if i else None for i in node.input]
        x = ins[0]
        if op in ACTIVATIONS:
            if self.capture is not None:
                self.capture.setdefault(node.name, []).append(x.detach())
            if self.mode == "adapted" and node.name in self.acts:
                return self.acts[node.name](x)
            return _activation(op, a, x, ins)
        if op == "Conv":
            return _conv(node, a, x, ins[1], ins[2] if len(ins) > 2 else None, self.g)
        if op == "Gemm":
            b = ins[1].T if a.get("transB", 0) else ins[1]
            y = a.get("alpha", 1.0) * (x @ b)
            return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 and ins[2] is not None else y
        if op == "MatMul":
            return torch.matmul(x, ins[1])
        if op == "BatchNormalization":
            return F.batch_norm(x, ins[3], ins[4], ins[1], ins[2], training=False,
                                eps=a.get("epsilon", 1e-5))
        if op == "AveragePool" or (op == "MaxPool" and self.mode == "adapted"):
            include = a.get("count_include_pad", 0) if op == "AveragePool" else 0
            return _average_pool(node, a, x, include, self.g)
        if op == "MaxPool":
            return _max_pool(node, a, x, self.g)
        if op == "GlobalAveragePool":
            return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        if op == "Transpose":
            return x.permute(*(a.get("perm") or range(x.dim() - 1, -1, -1)))
        if op in ("Add", "Sub", "Mul", "Div"):
            y = ins[1]
            return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](x, y)
        if op == "Sum":
            out = ins[0]
            for t in ins[1:]:
                out = out + t
            return out
        if op == "Pow":
            return x ** float(np.asarray(self.g.constants[node.input[1]]).reshape(-1)[0])
        if op in _VIEWS:
            return x.reshape((batch,) + tuple(self.g.shapes[node.output[0]][1:]))
        if op in ("Identity", "Dropout"):
            return x
        raise AdaptError(f"cannot adapt op {op} (node '{node.name}')")  # pragma: no cover


def _check_node(node: onnx.NodeProto, g: OnnxGraph) -> None:
    """What the batched module (and then protect) cannot do, named before anything runs."""
    a = attributes(node)
    data = [i for i in node.input if i and i not in g.constants]
    out_shape = g.shapes.get(node.output[0], ())
    where = f"{node.op_type} node '{node.name}'"
    if len(out_shape) == 0 or out_shape[0] != 1:
        raise AdaptError(f"{where}: its output {out_shape} has no batch axis first; cannot adapt")
    if node.op_type in ("Gemm", "MatMul") and (node.input[0] not in data or len(data) > 1
                                               or a.get("transA", 0)):
        raise AdaptError(f"{where}: only (input @ constant) can be adapted")
    if node.op_type in ("Mul", "Div", "Pow") and len(data) > 1 and len(set(data)) > 1:
        raise AdaptError(f"{where}: a product of two different computed tensors cannot be adapted")
    if node.op_type in ("Conv", "MaxPool", "AveragePool") and len(g.shapes[node.input[0]]) != 4:
        raise AdaptError(f"{where}: only 2-D convolution and pooling can be adapted")
    if node.op_type == "Conv" and a.get("group", 1) != 1:
        raise AdaptError(f"{where}: grouped convolution (group={a['group']}) cannot be adapted "
                         f"(protect does not support it)")
    if node.op_type in ("MaxPool", "AveragePool") and any(d != 1 for d in a.get("dilations", [1, 1])):
        raise AdaptError(f"{where}: dilated pooling cannot be adapted")
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        raise AdaptError(f"{where}: MaxPool's Indices output cannot be adapted")
    if node.op_type == "Transpose" and (a.get("perm") or [1])[0] != 0:
        raise AdaptError(f"{where}: a transpose that moves the batch axis cannot be adapted")
    if node.op_type == "Clip" and any(i and i not in g.constants for i in node.input[1:]):
        raise AdaptError(f"{where}: Clip bounds must be constants")


def clip_bounds(node, g: OnnxGraph):
    vals = [float(np.asarray(g.constants[i]).reshape(-1)[0]) if i else None
            for i in list(node.input[1:3]) + [""] * (3 - len(node.input))]
    return vals[0], vals[1]


def _activation(op, a, x, ins):
    if op == "Relu":
        return torch.relu(x)
    if op == "LeakyRelu":
        return F.leaky_relu(x, a.get("alpha", 0.01))
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Softplus":
        return F.softplus(x)
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    return torch.clamp(x, min=lo, max=hi)           # Clip


def _pads(node, a, g: OnnxGraph) -> list[int]:
    """[top, left, bottom, right] pads, SAME_* auto padding resolved from the static shapes."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        p = a.get("pads", [0, 0, 0, 0])
        return [p[0], p[1], p[2], p[3]]
    if auto == "VALID":
        return [0, 0, 0, 0]
    in_hw = g.shapes[node.input[0]][2:]
    out_hw = g.shapes[node.output[0]][2:]
    k = a.get("kernel_shape") or list(g.constants[node.input[1]].shape[2:])
    s = a.get("strides", [1, 1])
    d = a.get("dilations", [1, 1])
    pads = [0, 0, 0, 0]
    for i in range(2):
        total = max(0, (out_hw[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_hw[i])
        small, big = total // 2, total - total // 2
        pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


def _conv(node, a, x, w, b, g):
    t, l, bo, r = _pads(node, a, g)
    x = F.pad(x, (l, r, t, bo))
    return F.conv2d(x, w, b, stride=tuple(a.get("strides", [1, 1])),
                    dilation=tuple(a.get("dilations", [1, 1])))


def _average_pool(node, a, x, count_include_pad, g):
    """Window sum / number of counted elements, for any pads (also asymmetric) and ceil_mode."""
    t, l, bo, r = _pads(node, a, g)
    k, s = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
    ceil = bool(a.get("ceil_mode", 0))
    ones = torch.ones_like(x[:1, :1])
    if not count_include_pad:
        ones = F.pad(ones, (l, r, t, bo))
    else:
        ones = torch.ones_like(F.pad(ones, (l, r, t, bo)))
    def window_sum(v):
        return F.avg_pool2d(v, k, s, padding=0, ceil_mode=ceil, divisor_override=1)
    return window_sum(F.pad(x, (l, r, t, bo))) / window_sum(ones)


def _max_pool(node, a, x, g):
    t, l, bo, r = _pads(node, a, g)
    x = F.pad(x, (l, r, t, bo), value=float("-inf"))
    return F.max_pool2d(x, tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])), padding=0,
                        ceil_mode=bool(a.get("ceil_mode", 0)))
