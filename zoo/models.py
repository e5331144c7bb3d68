"""Architectures. Every model maps images in [0, 1] to logits; quantization is one of
``ref`` (float), ``bnn-wq`` (binary weights), ``bnn-waq`` (binary weights and activations)
and the multi-bit ``w{B}a{A}`` of :mod:`zoo.quantized` (B-bit weights, A-bit activations).
"""

from __future__ import annotations

from torch import nn

from zoo.layers import BinaryConv2d, BinaryLinear, SignActivation
from zoo.quantized import MULTIBIT, quant_conv, quant_linear, quant_relu

#: float and binarized: the quantizations the paper evaluates
QUANTS = ("ref", "bnn-wq", "bnn-waq")
#: every quantization an architecture can be built in
ALL_QUANTS = (*QUANTS, *MULTIBIT)


def check_quant(quant: str) -> None:
    if quant not in ALL_QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; allowed: {', '.join(ALL_QUANTS)}")


def dense(in_features: int, out_features: int, quant: str) -> nn.Module:
    """A fully connected layer of the given quantization."""
    if quant == "ref":
        return nn.Linear(in_features, out_features)
    if quant in MULTIBIT:
        return quant_linear(in_features, out_features, quant)
    return BinaryLinear(in_features, out_features, binarize_bias=quant == "bnn-wq")


def norm_act_1d(features: int, quant: str) -> list[nn.Module]:
    """BatchNorm plus activation after a hidden dense layer.

    ref: BN with affine parameters, ReLU. bnn-wq: BN *without* affine parameters, float ReLU.
    bnn-waq: BN with affine parameters, sign activation with straight-through gradient.
    w{B}a{A}: BN with affine parameters, A-bit ReLU (float ReLU for a32).
    """
    if quant == "ref":
        return [nn.BatchNorm1d(features), nn.ReLU()]
    if quant in MULTIBIT:
        return [nn.BatchNorm1d(features), quant_relu(quant)]
    if quant == "bnn-wq":
        return [nn.BatchNorm1d(features, affine=False), nn.ReLU()]
    return [nn.BatchNorm1d(features, affine=True), SignActivation()]


def dense_stack(in_features: int, hidden: list[int] | tuple[int, ...], num_classes: int,
                quant: str) -> list[nn.Module]:
    """Flatten, ``len(hidden)`` blocks of dense → BN → activation, then a dense output layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers.append(dense(width, h, quant))
        layers.extend(norm_act_1d(h, quant))
        width = h
    layers.append(dense(width, num_classes, quant))
    return layers


class MLP(nn.Module):
    """Flatten, then ``len(hidden)`` blocks of dense → BN → activation, then a dense output.

    The first layer sees the real-valued input (also in BNN-WAQ); the output layer has the
    model's quantization too (sign weights, and a sign bias for BNN-WQ), with no scaling.
    """

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, quant: str):
        super().__init__()
        check_quant(quant)
        self.quant = quant
        self.hidden_sizes = list(hidden)
        self.net = nn.Sequential(*dense_stack(in_features, hidden, num_classes, quant))

    def forward(self, x):  # noqa: D401 - nn.Module API
        return self.net(x)


# ---------------------------------------------------------------------------------------
# Convolutional building blocks (used by zoo.convnets and zoo.cifar). Same rules as above.


def conv3x3(in_channels: int, out_channels: int, quant: str, *, stride: int = 1,
            bias: bool = True) -> nn.Module:
    """A 3×3 convolution (padding 1) of the given quantization.

    ``bias`` applies to ``ref`` only: the binarized layers always carry a bias, a sign for
    BNN-WQ (every weight and bias is a sign, as the paper evaluates it) and a float for BNN-WAQ.
    """
    return conv(in_channels, out_channels, 3, quant, stride=stride, padding=1, bias=bias)


def conv(in_channels: int, out_channels: int, kernel_size: int, quant: str, *, stride: int = 1,
         padding: int = 0, bias: bool = True) -> nn.Module:
    """A convolution of the given quantization (see :func:`conv3x3` for ``bias``)."""
    check_quant(quant)
    if quant == "ref":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias=bias)
    if quant in MULTIBIT:
        return quant_conv(in_channels, out_channels, kernel_size, quant, stride=stride,
                          padding=padding, bias=bias)
    return BinaryConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                        binarize_bias=quant == "bnn-wq")


def norm_2d(channels: int, quant: str) -> nn.Module:
    """BatchNorm2d: without affine parameters for BNN-WQ, with them otherwise."""
    return nn.BatchNorm2d(channels, affine=quant != "bnn-wq")


def activation(quant: str) -> nn.Module:
    """ReLU (ref, bnn-wq: float activations), the sign with straight-through gradient
    (bnn-waq), or the A-bit ReLU (w{B}a{A})."""
    if quant in MULTIBIT:
        return quant_relu(quant)
    return SignActivation() if quant == "bnn-waq" else nn.ReLU()
