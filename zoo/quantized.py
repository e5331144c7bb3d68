"""Multi-bit quantized layers: quantization-aware training with Brevitas (fake quantization).

A multi-bit quantization is named ``w{B}a{A}``: B-bit weights and A-bit activations
(:data:`results.vocabulary.MULTIBIT`; ``a32`` means float activations, a weight-only setting).
Every layer computes in float on quantized values (Brevitas's fake quantization) with
straight-through gradients through the rounding, so every gradient attack runs on them:

* weights: Brevitas's default weight quantizer (``Int8WeightPerTensorFloat`` at B bits):
  signed integers in the narrow range [−(2^(B−1) − 1), 2^(B−1) − 1] times one float scale per
  tensor, max|w| / (2^(B−1) − 1), rounded half to even;
* activations: ``QuantReLU`` (Brevitas's default ``Uint8ActPerTensorFloat`` at A bits):
  clamp(round(relu(z) / s), 0, 2^A − 1) · s with one learned float scale s per layer
  (initialised from the 99.999th percentile of the first training batches' activations);
* as in the zoo's binarized networks, the first layer sees the real-valued input, BatchNorm
  (with affine parameters) follows every hidden layer, biases are float, and the logits are
  the float output of the quantized output layer.

Brevitas is imported when a multi-bit network is built, not when the zoo is imported.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

from torch import nn

from results.vocabulary import MULTIBIT


def bits(quant: str) -> tuple[int, int | None]:
    """(weight bits, activation bits or None) of a multi-bit quantization."""
    if quant not in MULTIBIT:
        raise ValueError(f"unknown multi-bit quantization {quant!r}; allowed: "
                         f"{', '.join(MULTIBIT)}")
    return MULTIBIT[quant]


def _brevitas_nn() -> Any:
    # importing brevitas imports torch.utils.cpp_extension, which warns on every import on a
    # machine without CUDA; that says nothing about the models
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import brevitas.nn as qnn

    return qnn


def quant_linear(in_features: int, out_features: int, quant: str) -> nn.Module:
    return _brevitas_nn().QuantLinear(in_features, out_features, bias=True,
                                      weight_bit_width=bits(quant)[0])


def quant_conv(in_channels: int, out_channels: int, kernel_size: int, quant: str, *,
               stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
    return _brevitas_nn().QuantConv2d(in_channels, out_channels, kernel_size, stride=stride,
                                      padding=padding, bias=bias,
                                      weight_bit_width=bits(quant)[0])


def quant_relu(quant: str) -> nn.Module:
    """The A-bit ``QuantReLU``, or a float ReLU for a weight-only quantization."""
    act = bits(quant)[1]
    return nn.ReLU() if act is None else _brevitas_nn().QuantReLU(bit_width=act)


def quantization_card(quant: str) -> dict[str, Any]:
    """What a multi-bit model card records about its quantization."""
    weight, act = bits(quant)
    try:
        version = importlib.metadata.version("brevitas")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {
        "weight_bits": weight,
        "activation_bits": act,
        "weight_quantizer": f"signed {weight}-bit integers, narrow range, one float scale per "
                            "tensor (max|w| / (2^(B-1) - 1)), round half to even "
                            "(Brevitas Int8WeightPerTensorFloat)",
        "activation_quantizer": ("float ReLU" if act is None else
                                 f"unsigned {act}-bit ReLU, one learned float scale per layer "
                                 "(Brevitas QuantReLU, Uint8ActPerTensorFloat)"),
        "input": "float (the first layer sees the real-valued input)",
        "bias": "float",
        "training": "quantization-aware (fake quantization, straight-through rounding)",
        "library": f"brevitas {version}",
    }
