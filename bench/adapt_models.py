"""The owner's models bench_adapt.py adapts, trained here the usual way (ReLU, MaxPool, BatchNorm)
and written to ONNX with onnx.helper, BatchNorms kept as nodes (what a model owner's export has).

- digits_net: scikit-learn's Digits (8x8), two 3x3 convs (8 channels: 512 values, cheap
  under CKKS) with BatchNorm and ReLU, a 2x2 MaxPool,
  a 64-unit ReLU dense layer (the CNN of issue 10); `square=True` is the same shape with x*x.
- crowd_relu: the shipped crowd model's shape (training/model.py) with ReLU instead of x*x.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class Square(nn.Module):
    def forward(self, x):
        return x * x


def digits_net(square: bool = False) -> nn.Sequential:
    act = Square if square else nn.ReLU
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), act(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), act(),
                         nn.AvgPool2d(2) if square else nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(128, 64), act(), nn.Linear(64, 10))


def crowd_relu_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 5, stride=2, padding=2), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(256, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Linear(32, 2))


def fit(net: nn.Sequential, x: np.ndarray, loss_fn, *, epochs: int, lr: float = 3e-3, batch: int = 64,
        seed: int = 0, log=print) -> nn.Sequential:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:
                continue
            loss = loss_fn(net(xt[idx]), idx)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            log(f"  train epoch {epoch + 1}/{epochs} loss {float(loss):.4f}")
    return net.eval()


def to_onnx(net: nn.Sequential, input_shape: tuple[int, ...], path, meta: dict | None = None):
    """nn.Sequential of Conv2d/BatchNorm/ReLU/Square/MaxPool/AvgPool/Flatten/Linear -> ONNX."""
    nodes, inits = [], []
    cur = "input"

    def const(name, t):
        inits.append(numpy_helper.from_array(t.detach().numpy().astype(np.float32), name))
        return name

    for i, m in enumerate(net):
        out = f"t{i}"
        if isinstance(m, nn.Conv2d):
            ins = [cur, const(f"conv{i}.w", m.weight), const(f"conv{i}.b", m.bias)]
            nodes.append(helper.make_node("Conv", ins, [out], name=f"conv{i}", kernel_shape=list(m.kernel_size),
                                          strides=list(m.stride), pads=list(m.padding) * 2))
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            ins = [cur] + [const(f"bn{i}.{k}", v) for k, v in (("scale", m.weight), ("bias", m.bias),
                                                              ("mean", m.running_mean), ("var", m.running_var))]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], name=f"bn{i}", epsilon=m.eps))
        elif isinstance(m, nn.ReLU):
            nodes.append(helper.make_node("Relu", [cur], [out], name=f"relu{i}"))
        elif isinstance(m, Square):
            nodes.append(helper.make_node("Mul", [cur, cur], [out], name=f"square{i}"))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            op = "MaxPool" if isinstance(m, nn.MaxPool2d) else "AveragePool"
            nodes.append(helper.make_node(op, [cur], [out], name=f"pool{i}", kernel_shape=[k, k], strides=[k, k]))
        elif isinstance(m, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], name=f"flatten{i}", axis=1))
        elif isinstance(m, nn.Linear):
            ins = [cur, const(f"fc{i}.w", m.weight), const(f"fc{i}.b", m.bias)]
            nodes.append(helper.make_node("Gemm", ins, [out], name=f"fc{i}", transB=1))
        else:
            raise TypeError(f"no ONNX export for {m}")
        cur = out
    nodes[-1].output[0] = "output"
    with torch.no_grad():
        n_out = net(torch.zeros((2,) + tuple(input_shape[1:]))).shape[1]
    graph = helper.make_graph(nodes, "owner_model",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
