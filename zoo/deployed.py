"""The deployed arithmetic of a multi-bit network, emulated exactly.

A fake-quantized network (:mod:`zoo.quantized`) computes in float32 on quantized values: its
matrix products round at every addition, and a pre-activation that float32 puts a hair on the
other side of a rounding threshold gets another activation code than exact arithmetic gives.
A deployed network computes in integers: integer weights times integer activation codes,
summed exactly, then rescaled. :class:`IntegerEmulation` evaluates the same network that way:

* a quantized layer multiplies its integer weights by the integer activation codes of the layer
  before (in float64, where every such sum of products is exact), then applies the product of
  the two scales and the float bias;
* BatchNorm (its running statistics) and the first layer's real-valued input are evaluated in
  float64;
* a quantized ReLU turns the value into codes, clamp(round(relu(z) / s), 0, 2^A − 1) (round half
  to even, as Brevitas), which the next layer multiplies; max-pooling acts on the codes (it
  commutes with the monotone scale).

The benchmark re-checks every adversarial example it counts on a multi-bit model against this
evaluation and records the share that holds (see :mod:`bench.engine`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import ChannelsLastMaxPool2d
from zoo.quantized import MULTIBIT


def is_multibit(model: nn.Module) -> bool:
    """Whether ``model`` has layers of :mod:`zoo.quantized` (without importing Brevitas)."""
    return any(type(m).__module__.startswith("brevitas.") for m in model.modules())


def integer_model(model: nn.Module) -> IntegerEmulation | None:
    """The exact integer evaluation of a multi-bit zoo network; None for any other model."""
    return IntegerEmulation(model) if is_multibit(model) else None


class IntegerEmulation(nn.Module):
    """Logits (float64) of ``model`` in exact integer arithmetic; see the module docstring.

    Built from the model as it is (eval mode, its current weights and scales); a model with
    a layer this emulation does not know is refused with the layer's type.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.steps: list[tuple[str, dict]] = []
        with torch.no_grad():
            self._read(model)

    def _read(self, module: nn.Module) -> None:
        import brevitas.nn as qnn

        if isinstance(module, qnn.QuantLinear | qnn.QuantConv2d):
            q = module.quant_weight()
            step = {"weight": q.int().detach().double(), "scale": float(q.scale.detach()),
                    "bias": None if module.bias is None else module.bias.detach().double()}
            if isinstance(module, qnn.QuantConv2d):
                step.update(stride=module.stride, padding=module.padding)
                self.steps.append(("conv", step))
            else:
                self.steps.append(("linear", step))
        elif isinstance(module, qnn.QuantReLU):
            self.steps.append(("quant_relu", {"scale": float(module.act_quant.scale()),
                                              "top": 2 ** int(module.act_quant.bit_width()) - 1}))
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            self.steps.append(("batchnorm", {
                "mean": module.running_mean.double(), "var": module.running_var.double(),
                "eps": module.eps,
                "weight": None if module.weight is None else module.weight.detach().double(),
                "bias": None if module.bias is None else module.bias.detach().double()}))
        elif isinstance(module, nn.ReLU):
            self.steps.append(("relu", {}))
        elif isinstance(module, nn.Flatten):
            self.steps.append(("flatten", {}))
        elif isinstance(module, ChannelsLastMaxPool2d | nn.MaxPool2d):
            self.steps.append(("maxpool", {"kernel": module.kernel_size,
                                           "stride": module.stride}))
        elif isinstance(module, nn.Sequential) or type(module).__module__.startswith("zoo."):
            for child in module.children():  # the zoo's containers run their children in order
                self._read(child)
        else:
            raise ValueError(f"the integer emulation does not know {type(module).__name__} "
                             f"layers (it knows the zoo's {', '.join(MULTIBIT)} networks)")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, scale = x.double(), None  # scale None: value is real; else codes × scale
        for kind, p in self.steps:
            if kind in ("linear", "conv"):
                w = p["weight"].to(value.device)
                acc = value @ w.T if kind == "linear" else F.conv2d(
                    value, w, stride=p["stride"], padding=p["padding"])
                value = acc * (p["scale"] * (1.0 if scale is None else scale))
                if p["bias"] is not None:
                    b = p["bias"].to(value.device)
                    value = value + (b if kind == "linear" else b[:, None, None])
                scale = None
            elif kind == "quant_relu":
                real = value if scale is None else value * scale
                value = torch.clamp(torch.round(torch.relu(real) / p["scale"]), 0, p["top"])
                scale = p["scale"]
            elif kind == "batchnorm":
                real = value if scale is None else value * scale
                shape = (1, -1) + (1,) * (real.ndim - 2)
                value = (real - p["mean"].view(shape)) / torch.sqrt(p["var"].view(shape)
                                                                     + p["eps"])
                if p["weight"] is not None:
                    value = value * p["weight"].view(shape) + p["bias"].view(shape)
                scale = None
            elif kind == "relu":
                value = torch.relu(value)
            elif kind == "flatten":
                value = value.flatten(1)
            elif kind == "maxpool":
                value = F.max_pool2d(value, p["kernel"], p["stride"])
        return value if scale is None else value * scale
