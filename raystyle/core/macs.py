"""How much a generator costs: multiply-accumulates (MACs) and parameters, two ways.

``count_macs`` runs the torch module once on a (1, 3, side, side) input with forward hooks;
``count_onnx_macs`` reads an exported ONNX graph (shapes by ONNX shape inference), so a
figure recorded at export can be checked against the graph that is served.

The convention (both counters): convolutions only, one MAC per weight use, bias, norms and
activations not counted (they are < 0.1% of these nets). Conv2d: output elements x
(in_channels / groups) x kh x kw. ConvTranspose2d: *input* elements x (out_channels /
groups) x kh x kw, the multiplies it really does (torchprofile counts output elements
there, 4x more for a stride-2 layer). The paper's ResNet-9 at 256 px: 49.6 GMACs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net: nn.Module, side: int = 256) -> int:
    """MACs of one forward pass of ``net`` on a (1, 3, side, side) image."""
    total = 0

    def conv(m: nn.Conv2d, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def deconv(m: nn.ConvTranspose2d, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += inputs[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)

    hooks = []
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(deconv))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
    was_training = net.training
    try:
        net.eval()
        device = next(net.parameters()).device
        net(torch.zeros(1, 3, side, side, device=device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return total


def count_onnx_macs(path: str | Path, side: int = 256) -> int:
    """MACs of an exported single-image ONNX graph at (1, 3, side, side), from the graph alone."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, value in zip(dims, (1, 3, side, side), strict=True):
        d.Clear()
        d.dim_value = value
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = {}
    for info in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        dim = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dim):
            shapes[info.name] = [d.dim_value for d in dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        weight = shapes.get(node.input[1])
        data = shapes.get(node.input[0] if node.op_type == "ConvTranspose" else node.output[0])
        if weight is None or data is None:
            raise ValueError(f"{path}: no static shape for {node.op_type} node {node.name!r}")
        # Conv: weight (out, in/g, kh, kw), counted per output element; ConvTranspose: weight
        # (in, out/g, kh, kw), counted per input element
        total += math.prod(data) * weight[1] * math.prod(weight[2:])
    return total
