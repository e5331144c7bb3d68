"""The zoo's fast paths: ``zoo.layers.frozen`` (how the runner attacks a model: weight signs
computed once per block), the mask-free sign and straight-through gradient, and the
channels-last max-pool (with and without autograd).

The promise is exactness: the same logits and the same input gradients bit for bit, and a latent
weight changed inside a frozen block is an error, never a silently stale model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.convnets import convnet
from zoo.layers import BinaryLinear, ChannelsLastMaxPool2d, frozen, sign_pm1, sign_ste
from zoo.models import MLP

ARCHS = {
    "mlp-bnn-waq": lambda: MLP(784, [64, 32], 10, "bnn-waq"),
    "mlp-bnn-wq": lambda: MLP(784, [64, 32], 10, "bnn-wq"),
    "convnet-bnn-waq": lambda: convnet("bnn-waq"),
    "convnet-bnn-wq": lambda: convnet("bnn-wq"),
    "mlp-ref": lambda: MLP(784, [64], 10, "ref"),
}


def _logits_and_input_grad(model, x, y):
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
    return logits.detach(), grad


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_model_computes_the_same_logits_and_gradients_bit_for_bit(arch):
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    with torch.no_grad():  # batch-norm statistics away from the defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-2, 2)
                m.running_var.uniform_(0.5, 3)
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    before = _logits_and_input_grad(model, x, y)
    with frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
        inside = _logits_and_input_grad(model, x, y)
    after = _logits_and_input_grad(model, x, y)
    for a, b, c in zip(before, inside, after, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert before[1].abs().sum() > 0  # the gradient is not trivially zero
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_frozen_reuses_the_signs_and_refuses_weights_changed_inside():
    torch.manual_seed(0)
    model = MLP(784, [32], 10, "bnn-waq").eval()
    first = next(m for m in model.modules() if isinstance(m, BinaryLinear))
    x = torch.rand(4, 784)
    with pytest.raises(RuntimeError, match="modified in place inside zoo.layers.frozen"), \
            frozen(model):
        out = model(x)
        with torch.no_grad():
            first.weight.neg_()  # every sign flips ...
        assert torch.equal(model(x), out)  # ... but the block computes with its signs
    assert not torch.equal(model(x), out)  # outside, the new weights count again
    assert "_fixed" not in vars(first)


def test_frozen_blocks_nest_and_training_outside_still_reaches_the_weights():
    torch.manual_seed(0)
    model = MLP(784, [32], 10, "bnn-wq").eval()
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    with frozen(model):
        fixed = [m._fixed for m in layers]
        with frozen(model):
            assert [m._fixed for m in layers] == fixed  # the outer block's signs, not new ones
        assert [m._fixed for m in layers] == fixed  # the inner exit kept them
    assert all(m._fixed is None for m in layers)
    model.train()
    F.cross_entropy(model(torch.rand(8, 784)), torch.arange(8)).backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in layers)


def test_sign_keeps_dtype_and_its_gradient_is_hardtanhs():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64,
                     requires_grad=True)
    s = sign_ste(x)
    assert s.dtype == torch.float64
    assert s.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert sign_pm1(torch.zeros(2, dtype=torch.float16)).dtype == torch.float16
    (g,) = torch.autograd.grad(s, x, torch.full_like(x, 3.0))
    assert g.tolist() == [0, 3, 3, 3, 3, 3, 0]  # 1{|x| <= 1}: the ends of [-1, 1] included


def test_channels_last_pool_has_the_plain_pools_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(8, 16, 28, 28).round()  # integer values: many ties, as after sign layers
    plain, fast = torch.nn.MaxPool2d(2), ChannelsLastMaxPool2d(2)
    with torch.no_grad():
        out = fast(x)
    assert out.is_contiguous() and torch.equal(out, plain(x))
    xg = x.clone().requires_grad_(True)
    cot = torch.randn(8, 16, 14, 14)
    (g_fast,) = torch.autograd.grad(fast(xg), xg, cot)
    (g_plain,) = torch.autograd.grad(plain(xg), xg, cot)
    assert torch.equal(g_fast, g_plain)  # ties go to the same input


@pytest.mark.parametrize(("shape", "kwargs"), [
    ((4, 16, 28, 28), {}),
    ((3, 5, 7, 9), {}),  # odd sizes: the last row and column are dropped
    ((3, 5, 7, 9), {"ceil_mode": True}),
    ((2, 4, 10, 10), {"stride": 1}),  # overlapping windows: gradients accumulate
    ((2, 4, 10, 10), {"padding": 1}),
])
def test_channels_last_pool_with_autograd_is_the_plain_pool_bit_for_bit(shape, kwargs):
    """With autograd the pool runs on a channels-last copy (its kernel is vectorized) and its
    backward is the plain kernel with the same indices: outputs and input gradients are the
    plain pool's, ties, NaN, ±0 and infinities included."""
    torch.manual_seed(1)
    x = torch.randn(shape).round()
    flat = x.view(-1)
    flat[::97] = float("nan")
    flat[5::89] = -0.0
    flat[7::101] = float("inf")
    flat[9::103] = -float("inf")
    plain, fast = torch.nn.MaxPool2d(2, **kwargs), ChannelsLastMaxPool2d(2, **kwargs)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_plain, out_fast = plain(xa), fast(xb)
    assert out_fast.grad_fn is not None and "ChannelsLast" in type(out_fast.grad_fn).__name__
    assert out_fast.is_contiguous() and out_fast.shape == out_plain.shape
    assert torch.equal(out_fast.view(-1).view(torch.int32), out_plain.view(-1).view(torch.int32))
    cot = torch.randn(out_plain.shape)
    cot.view(-1)[::3] = -0.0
    (g_plain,) = torch.autograd.grad(out_plain, xa, cot)
    (g_fast,) = torch.autograd.grad(out_fast, xb, cot)
    assert g_fast.is_contiguous()
    assert torch.equal(g_fast.view(-1).view(torch.int32), g_plain.view(-1).view(torch.int32))
