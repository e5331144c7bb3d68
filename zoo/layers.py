"""Binarized building blocks, exactly as Gupta & Ajanthan (AAAI 2022) evaluate them
(BinaryNet-style BNN-WAQ, sign-weight BNN-WQ).

* ``sign_pm1`` maps to exactly +1/-1 (zero goes to +1), never 0.
* Weights are binarized in every forward pass (training and evaluation alike, BinaryConnect
  style); the latent float weights only receive the straight-through gradient.
* ``SignActivation`` is BinaryNet's activation: forward ``sign``, backward the gradient of
  hardtanh, ``1{|x| <= 1}`` (the straight-through estimator).
* Inside :func:`frozen` (how the benchmark attacks a model) no parameter takes a gradient, and
  each binarized layer computes the signs of its weights once instead of in every forward
  pass: the same ±1 values, so the same logits bit for bit, at a fraction of the cost (for a
  3×512 MLP the weight signs are about a third of a forward pass at batch 256).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Elementwise sign with values in {-1, +1} (``sign(0) = sign(-0) = +1``), of the dtype of
    ``x``.

    Computed as ``sign(sign(x) + 0.5)``: three vectorized passes into one new tensor, with the
    same values as ``where(x >= 0, 1, -1)`` for every number, ±0 and ±inf included (a NaN stays
    NaN). The ``where`` form goes through a boolean mask and costs several times more on CPU.
    """
    return torch.sign(x).add_(0.5).sign_()


def ste_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad · 1{|x| ≤ 1}``, hardtanh's gradient, in one fused pass.

    ``hardtanh_backward`` zeroes the gradient where ``x ≤ lo`` or ``x ≥ hi``; with ``lo, hi``
    the numbers of ``x``'s dtype just outside ±1 (``∓(1 + eps)``), that is exactly ``|x| > 1``,
    so ±1 themselves keep their gradient. (Zeroed entries are +0 where ``grad · 0`` could give
    -0; the two are equal.) Several times faster than multiplying by a boolean mask.
    """
    edge = 1.0 + torch.finfo(x.dtype).eps
    return torch.ops.aten.hardtanh_backward(grad, x, -edge, edge)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ste_grad(grad, x)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Sign in the forward pass, hardtanh's gradient in the backward pass."""
    return _SignSTE.apply(x)


class SignActivation(nn.Module):
    """BinaryNet activation: exactly ±1 forward, straight-through gradient backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


class _Binarized:
    """What binarized layers share: sign weights, a sign or float bias, and the signs held
    fixed while :func:`frozen` is active."""

    weight: nn.Parameter
    bias: nn.Parameter
    binarize_bias: bool
    _fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    def binary_weight(self) -> torch.Tensor:
        return self._fixed[0] if self._fixed is not None else sign_ste(self.weight)

    def effective_bias(self) -> torch.Tensor:
        if self._fixed is not None:
            return self._fixed[1]
        return sign_ste(self.bias) if self.binarize_bias else self.bias


class BinaryLinear(_Binarized, nn.Linear):
    """A linear layer whose weights (and optionally bias) are replaced by their sign.

    No scaling factor is applied. ``binarize_bias=True`` is BNN-WQ (every weight and bias is a
    sign); ``False`` keeps a float bias (BNN-WAQ).
    """

    def __init__(self, in_features: int, out_features: int, *, binarize_bias: bool) -> None:
        super().__init__(in_features, out_features, bias=True)
        self.binarize_bias = binarize_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.effective_bias())


class BinaryConv2d(_Binarized, nn.Conv2d):
    """A 2-d convolution with sign weights (and optionally sign bias), no scaling."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
        padding: int = 0, binarize_bias: bool,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.binarize_bias = binarize_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.effective_bias())


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that, when no gradient is recorded on a CPU, pools a channels-last copy
    of its input and returns a contiguous result.

    The maxima are the same numbers either way; PyTorch's CPU kernel for the channels-last
    layout is vectorized over channels, the one for contiguous NCHW inputs is not. With the
    two copies, a forward pass without autograd (Square's queries, Brendel-Bethge's searches,
    verification) pools 2-6 times faster on the zoo's convnet shapes (batch 50 and 256, one
    thread). With autograd the copies and their backward cost about what they save: the plain
    kernel runs, and gradient attacks see exactly ``nn.MaxPool2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.ndim != 4 or self.return_indices
                or (torch.is_grad_enabled() and x.requires_grad)):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` fixed for attacking: inside the block no parameter requires a gradient (attacks
    need input gradients only), and every binarized layer whose signs are not already fixed
    computes them once, on entry, and reuses them in each forward pass.

    The latent weights must not change inside the block: on exit, a binarized layer's weight or
    bias modified in place raises ``RuntimeError`` (the layer computed with the signs of
    entry). Everything is restored on exit; blocks nest.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    fixed = [m for m in model.modules() if isinstance(m, _Binarized) and m._fixed is None]
    versions = [(m.weight._version, m.bias._version) for m in fixed]
    for m in fixed:
        m._fixed = (m.binary_weight(), m.effective_bias())
    try:
        yield model
    finally:
        for m in fixed:
            del m._fixed  # back to the class default: signs in every forward pass
        for p, flag in flags:
            p.requires_grad_(flag)
    changed = [m for m, v in zip(fixed, versions, strict=True)
               if (m.weight._version, m.bias._version) != v]
    if changed:
        raise RuntimeError(f"{len(changed)} binarized layer(s) had their weights modified in "
                           "place inside zoo.layers.frozen; their outputs there used the "
                           "signs of the weights on entry")


def clip_latent_weights(model: nn.Module, bound: float = 1.0) -> None:
    """Keep binarized layers' latent weights in [-bound, bound] (BinaryConnect)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryLinear | BinaryConv2d):
                m.weight.clamp_(-bound, bound)
                if m.binarize_bias:
                    m.bias.clamp_(-bound, bound)
