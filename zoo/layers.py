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


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max-pooling of an NCHW input through its channels-last copy, with the plain backward.

    Forward: the channels-last kernel on a copy (values and indices, then both made contiguous).
    Its indices are the plain kernel's (positions within each H×W plane, the first maximum of a
    window in scan order, a NaN taken over any number), so the backward is the plain kernel,
    ``max_pool2d_with_indices_backward``, on the very operands that ``nn.MaxPool2d``'s backward
    gets: the same input gradient bit for bit.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel_size, stride, padding, dilation,  # type: ignore[override]
                ceil_mode: bool) -> torch.Tensor:
        out, idx = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last),
                                             kernel_size, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(x, idx.contiguous())
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, idx = ctx.saved_tensors
        gx = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.args,
                                                             idx)
        return gx, None, None, None, None, None


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that, on a CPU, pools a channels-last copy of its input and returns a
    contiguous result: the same numbers, and with autograd the same input gradients.

    PyTorch's CPU kernel for the channels-last layout is vectorized over channels, the one for
    contiguous NCHW inputs is not. Without autograd (Square's queries, Brendel-Bethge's
    searches, verification) the copy is pooled directly; with autograd the copy's indices feed
    the plain backward kernel (:class:`_ChannelsLastMaxPool`). On the zoo's convnet shapes (batch
    256, copies included) the forward pass with indices takes 4.5 instead of 14 ms for the first
    pool and 2.5 instead of 7.4 ms for the second at one thread, 2.5 instead of 7.7 and 1.5
    instead of 4.1 ms at two.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.ndim != 4 or self.return_indices:
            return super().forward(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _ChannelsLastMaxPool.apply(x, self.kernel_size, self.stride, self.padding,
                                              self.dilation, self.ceil_mode)
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
