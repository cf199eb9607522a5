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
            log(f"  train epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.4f}")
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


# --- the shipped crowd model's architecture with ReLU, trained the shipped way on real frames ---

def crowd_relu_real_class():
    """training.model.CrowdIncidentNet with ReLU where it has x*x (both activations), the count's
    quadratic correction held at 0 (a ReLU owner's model has no square to carry it), everything
    else - density map, gray-only channels, the trainer - as shipped."""
    from training.model import CrowdIncidentNet

    class CrowdReluNet(CrowdIncidentNet):
        def __init__(self, arch):
            super().__init__(arch)
            self.count_curve.requires_grad_(False)

        def features(self, x):
            h = x
            for i, (conv, bn, pool) in enumerate(zip(self.convs, self.bns, self.pools)):
                h = bn(nn.functional.conv2d(h, self.conv_weight(i), conv.bias, conv.stride, conv.padding))
                h = pool(torch.relu(h))
            return h

        def forward_all(self, x):
            f = self.features(x)
            density = (f[:, :self.arch.gray[-1]] * self.density_w).sum(1) + self.density_b
            flat = torch.flatten(f, 1)
            z = self.bn_fc(self.fc1(flat))
            logit = self.fc2(torch.relu(z))[:, 0] + self.inc_lin(flat)[:, 0]
            return torch.stack([density.flatten(1).sum(1), logit], 1), density

    return CrowdReluNet


def train_crowd_relu(arch, real, synthetic, *, epochs: int, seed: int, log=print):
    """training.fit.train (the shipped loop: losses, cut-mix, jitter, schedule) on the ReLU net."""
    from training import fit
    return fit.train(arch, real, synthetic, None, epochs=epochs, seed=seed, log=log,
                     net_cls=crowd_relu_real_class())


def crowd_relu_sequential(net) -> nn.Sequential:
    """The trained ReLU crowd net as the owner's plain graph: Conv (motion mask applied) + BN +
    ReLU + AvgPool -> Flatten -> Gemm + BN + ReLU -> Gemm. The linear parts (count, linear incident
    term) travel through the hidden ReLU as relu(L) - relu(-L) = L (two units each, exactly as
    the shipped model carries them through its square), so the graph has one path and the shape
    of the shipped model (hidden + 4 units)."""
    if len(net.convs) != 1:
        raise ValueError("crowd_relu_sequential: one convolution block only")
    arch = net.arch
    with torch.no_grad():
        conv = nn.Conv2d(2, arch.convs[0][0], net.convs[0].kernel_size, stride=net.convs[0].stride,
                         padding=net.convs[0].padding)
        conv.weight.copy_(net.conv_weight(0))
        conv.bias.copy_(net.convs[0].bias)
        c, h, w = arch.conv_shapes()[-1]
        count_row = torch.zeros(c, h, w)
        count_row[:arch.gray[-1]] = net.density_w
        rows = [count_row.flatten(), -count_row.flatten(), net.inc_lin.weight[0], -net.inc_lin.weight[0]]
        biases = [net.density_b.sum(), -net.density_b.sum(), net.inc_lin.bias[0], -net.inc_lin.bias[0]]
        fc1 = nn.Linear(arch.flat(), arch.hidden + 4)
        fc1.weight.copy_(torch.cat([net.fc1.weight, torch.stack(rows)]))
        fc1.bias.copy_(torch.cat([net.fc1.bias, torch.stack(biases)]))
        bn = nn.BatchNorm1d(arch.hidden + 4, eps=net.bn_fc.eps)     # identity on the 4 pair units
        bn.eval()
        bn.weight.copy_(torch.cat([net.bn_fc.weight, torch.ones(4)]))
        bn.bias.copy_(torch.cat([net.bn_fc.bias, torch.zeros(4)]))
        bn.running_mean.copy_(torch.cat([net.bn_fc.running_mean, torch.zeros(4)]))
        bn.running_var.copy_(torch.cat([net.bn_fc.running_var, torch.full((4,), 1.0 - net.bn_fc.eps)]))
        fc2 = nn.Linear(arch.hidden + 4, 2)
        fc2.weight.zero_()
        fc2.weight[1, :arch.hidden] = net.fc2.weight[0]
        fc2.weight[0, arch.hidden:arch.hidden + 2] = torch.tensor([1.0, -1.0])
        fc2.weight[1, arch.hidden + 2:] = torch.tensor([1.0, -1.0])
        fc2.bias.copy_(torch.stack([torch.zeros(()), net.fc2.bias[0]]))
        bn_conv = net.bns[0]
        pool = net.pools[0]
    seq = nn.Sequential(conv, bn_conv, nn.ReLU(), pool, nn.Flatten(), fc1, bn, nn.ReLU(), fc2).eval()
    x = torch.rand(8, 2, *arch.size)
    with torch.no_grad():
        err = float((seq(x) - net(x)).abs().max())
    if err > 1e-3:
        raise ValueError(f"crowd_relu_sequential: the plain graph differs from the net by {err}")
    return seq
