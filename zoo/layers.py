"""Binarized building blocks, exactly as Gupta & Ajanthan (AAAI 2022) evaluate them
(BinaryNet-style BNN-WAQ, sign-weight BNN-WQ).

* ``sign_pm1`` maps to exactly +1/-1 (zero goes to +1), never 0.
* Weights are binarized in every forward pass (training and evaluation alike, BinaryConnect
  style); the latent float weights only receive the straight-through gradient.
* ``SignActivation`` is BinaryNet's activation: forward ``sign``, backward the gradient of
  hardtanh, ``1{|x| <= 1}`` (the straight-through estimator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Elementwise sign with values in {-1, +1} (``sign(0) = +1``)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Sign in the forward pass, hardtanh's gradient in the backward pass."""
    return _SignSTE.apply(x)


class SignActivation(nn.Module):
    """BinaryNet activation: exactly ±1 forward, straight-through gradient backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


class BinaryLinear(nn.Linear):
    """A linear layer whose weights (and optionally bias) are replaced by their sign.

    No scaling factor is applied. ``binarize_bias=True`` is BNN-WQ (every weight and bias is a
    sign); ``False`` keeps a float bias (BNN-WAQ).
    """

    def __init__(self, in_features: int, out_features: int, *, binarize_bias: bool) -> None:
        super().__init__(in_features, out_features, bias=True)
        self.binarize_bias = binarize_bias

    def binary_weight(self) -> torch.Tensor:
        return sign_ste(self.weight)

    def effective_bias(self) -> torch.Tensor:
        return sign_ste(self.bias) if self.binarize_bias else self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.effective_bias())


class BinaryConv2d(nn.Conv2d):
    """A 2-d convolution with sign weights (and optionally sign bias), no scaling."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
        padding: int = 0, binarize_bias: bool,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.binarize_bias = binarize_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = sign_ste(self.bias) if self.binarize_bias else self.bias
        return self._conv_forward(x, sign_ste(self.weight), bias)


def clip_latent_weights(model: nn.Module, bound: float = 1.0) -> None:
    """Keep binarized layers' latent weights in [-bound, bound] (BinaryConnect)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryLinear | BinaryConv2d):
                m.weight.clamp_(-bound, bound)
                if m.binarize_bias:
                    m.bias.clamp_(-bound, bound)
