"""An exact integer view of a BNN-WAQ MLP (BinaryNet-style, as in Gupta & Ajanthan, AAAI 2022,
Sec. 6, and Khalil et al., ICLR 2019).

A BNN-WAQ MLP is ``Flatten, [BinaryLinear(float bias) → BatchNorm1d(affine) → sign] × L,
BinaryLinear``. In eval mode each hidden block is a threshold unit. With ``k = W_j·h`` (sign
weights), ``b`` the float bias and the BN scale ``s = γ / sqrt(var + eps)``::

    sign(s·(k + b − μ) + β) = +1   ⇔   σ_j·(k − τ_j) ≥ 0,   σ_j = sign(s),  τ_j = μ − b − β/s.

For layers ≥ 2 the input ``h`` is ±1, so ``k`` is an integer and the test is exact in integers:
``A_j·h ≥ T_j`` with ``A_j = σ_j·W_j`` and ``T_j = ceil(σ_j·τ_j)`` (for σ = −1 this is
``k ≤ floor(τ)``). A unit whose BN scale is exactly 0 is constant (+1 iff β ≥ 0): its row of
``A`` is 0 and ``T`` is 0 (always +1) or 1 (always −1). The float64 thresholds are then checked
against torch's own float32 arithmetic on every reachable integer ``k`` (the BN is monotone in
``k``), so the integer network agrees with the torch model bit for bit, ties included.

The first layer sees the real-valued input. :meth:`IntegerBNN.forward_hidden` computes it with
the very same float32 operations as the model (so it agrees with torch exactly); the attack
uses the folded float64 form ``σ_j·(W_j·x − τ_j)`` (:meth:`IntegerBNN.first_margins`).
The output layer is ``logits = W_out·h_L + b_out`` (again with torch's own operation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import unwrap
from results.errors import QBenchError
from zoo.layers import BinaryLinear, SignActivation, sign_pm1

#: Margin (in first-layer pre-activation units) by which a float64 first-layer margin must clear 0
#: to be sure of the sign that the model's float32 arithmetic gives; IPROP's input step and the
#: exact verifier (:mod:`attacks.milp`) both use it.
FIRST_LAYER_TOL = 1e-4

SUPPORTED = "bnn-waq MLPs (Flatten, [BinaryLinear with float bias → BatchNorm1d(affine=True) → " \
    "SignActivation] × L, BinaryLinear)"


class UnsupportedModelError(QBenchError, ValueError):
    """The model is not a BNN-WAQ MLP, the only kind the integer view (and IPROP) handles."""


def _describe(model: nn.Module) -> str:
    quant = getattr(model, "quant", None)
    layers = list(model.net) if isinstance(getattr(model, "net", None), nn.Sequential) \
        else list(model.children())
    kinds = []
    for m in layers[:8]:
        text = type(m).__name__
        if isinstance(m, BinaryLinear):
            text += "(binary bias)" if m.binarize_bias else "(float bias)"
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            text += "(affine)" if m.affine else "(no affine)"
        kinds.append(text)
    if len(layers) > 8:
        kinds.append("…")
    found = f"a {type(model).__name__}"
    if quant is not None:
        found += f" with quant {quant!r}"
    return found + f" with layers [{', '.join(kinds) or 'none'}]"


def _refuse(model: nn.Module, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"only {SUPPORTED} are supported; found {_describe(model)} ({why})"
    )


def _split_blocks(model: nn.Module) -> tuple[list[tuple[BinaryLinear, nn.BatchNorm1d]],
                                             BinaryLinear]:
    """The hidden (linear, BN) blocks and the output layer, or UnsupportedModelError."""
    quant = getattr(model, "quant", None)
    if quant is not None and quant != "bnn-waq":
        raise _refuse(model, f"quantization {quant!r} is not 'bnn-waq'")
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Sequential):
        raise _refuse(model, "no `net` Sequential")
    layers = list(net)
    if not layers or not isinstance(layers[0], nn.Flatten):
        raise _refuse(model, "the first layer is not Flatten")
    body, out = layers[1:-1], layers[-1] if len(layers) > 1 else None
    if not isinstance(out, BinaryLinear) or out.binarize_bias:
        raise _refuse(model, "the last layer is not a BinaryLinear with a float bias")
    if len(body) == 0 or len(body) % 3:
        raise _refuse(model, "the hidden layers are not [BinaryLinear, BatchNorm1d, sign] blocks")
    blocks = []
    for i in range(0, len(body), 3):
        lin, bn, act = body[i : i + 3]
        ok = (isinstance(lin, BinaryLinear) and not lin.binarize_bias
              and type(bn) is nn.BatchNorm1d and bn.affine and bn.running_mean is not None
              and isinstance(act, SignActivation))
        if not ok:
            raise _refuse(model, f"hidden block {i // 3 + 1} is "
                          f"[{type(lin).__name__}, {type(bn).__name__}, {type(act).__name__}]")
        blocks.append((lin, bn))
    return blocks, out


@dataclass
class BNFold:
    """One hidden layer folded into threshold form (all float64 / integer, on the CPU)."""

    W: torch.Tensor  # (out, in) int8 ±1: sign weights
    sigma: torch.Tensor  # (out,) int8 in {-1, 0, +1}: sign of the BN scale
    tau: torch.Tensor  # (out,) float64: unit is +1 iff σ·(W·h − τ) ≥ 0 (σ ≠ 0)
    const: torch.Tensor  # (out,) int8: the value of a unit with σ = 0 (else 0)


def fold_bn(lin: BinaryLinear, bn: nn.BatchNorm1d) -> BNFold:
    """Fold the float bias and the eval-mode BN of one hidden block into ``(σ, τ)``."""
    with torch.no_grad():
        W = sign_pm1(lin.weight.detach().cpu()).to(torch.int8)
        b = lin.bias.detach().cpu().double()
        mu = bn.running_mean.detach().cpu().double()
        var = bn.running_var.detach().cpu().double()
        gamma = bn.weight.detach().cpu().double()
        beta = bn.bias.detach().cpu().double()
    scale = gamma / torch.sqrt(var + bn.eps)
    sigma = torch.sign(scale).to(torch.int8)
    safe = torch.where(sigma != 0, scale, torch.ones_like(scale))
    tau = torch.where(sigma != 0, mu - b - beta / safe, torch.zeros_like(scale))
    const = torch.where(sigma == 0, torch.where(beta >= 0, 1, -1), 0).to(torch.int8)
    return BNFold(W, sigma, tau, const)


def _torch_unit_table(lin: BinaryLinear, bn: nn.BatchNorm1d, ks: torch.Tensor) -> torch.Tensor:
    """sign(BN(k + b)) for every integer ``k`` in ``ks`` and every unit, as torch computes it."""
    with torch.no_grad():
        pre = ks.to(torch.float32)[:, None].to(lin.bias.device) + lin.bias.detach()[None, :]
        out = F.batch_norm(pre, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                           bn.eps)
        return sign_pm1(out).cpu().to(torch.int8)


@dataclass
class IntegerLayer:
    """Hidden layer ``l ≥ 2`` in integers: unit j is +1 iff ``A_j·h ≥ T_j`` (h ∈ {±1})."""

    A: torch.Tensor  # (out, in) int32: σ_j·W_j (a zero row for a constant unit)
    T: torch.Tensor  # (out,) int32
    sigma: torch.Tensor  # (out,) int8
    W: torch.Tensor  # (out, in) int8 ±1


class IntegerBNN:
    """The exact integer view of a trained BNN-WAQ MLP in eval mode.

    ``layers[0]`` is the real-valued first layer (folded float64 ``σ``, ``τ``); ``hidden`` holds
    layers 2..L in integers; ``W_out``/``b_out`` the output layer. ``calibrated`` counts the
    integer thresholds where torch's float32 rounding moved a float64 threshold (usually 0).
    ``forwards`` counts the inputs passed through the network (:meth:`forward_hidden`).
    Transparent wrappers around the model (a pass counter) are looked through.
    """

    def __init__(self, model: nn.Module) -> None:
        model = unwrap(model)
        blocks, out = _split_blocks(model)
        self.forwards = 0
        self.model = model
        self.num_layers = len(blocks)
        self.widths = [lin.out_features for lin, _ in blocks]
        lin1, bn1 = blocks[0]
        self._lin1, self._bn1 = lin1, bn1
        first = fold_bn(lin1, bn1)
        self.W1 = first.W.to(torch.float64)  # (n1, N) ±1
        self.sigma1 = first.sigma.to(torch.float64)
        self.tau1 = first.tau
        self.const1 = first.const
        self.in_features = lin1.in_features
        self.hidden: list[IntegerLayer] = []
        self.calibrated = 0
        for lin, bn in blocks[1:]:
            self.hidden.append(self._integer_layer(lin, bn))
        with torch.no_grad():
            self.W_out = sign_pm1(out.weight.detach().cpu()).to(torch.int8)  # (C, n_L)
            self.b_out = out.bias.detach().cpu().clone()  # float32, as the model adds it
        self._W_out_f = self.W_out.to(torch.float32)

    def _integer_layer(self, lin: BinaryLinear, bn: nn.BatchNorm1d) -> IntegerLayer:
        fold = fold_bn(lin, bn)
        n_in = lin.in_features
        sigma = fold.sigma.to(torch.int32)
        A = sigma[:, None] * fold.W.to(torch.int32)
        # T = ceil(σ·τ) for σ ≠ 0; constant units: 0 (always +1) or 1 (always −1).
        T = torch.where(
            sigma != 0,
            torch.ceil(sigma.double() * fold.tau).clamp(-n_in - 1, n_in + 1).to(torch.int32),
            torch.where(fold.const > 0, 0, 1).to(torch.int32),
        )
        # Check against torch's float32 arithmetic on every reachable k (parity of n_in).
        ks = torch.arange(-n_in, n_in + 1, 2)
        table = _torch_unit_table(lin, bn, ks)  # (len(ks), out)
        pred = torch.where(sigma[None, :] * ks[:, None] >= T[None, :], 1, -1)
        pred = torch.where(sigma[None, :] == 0, torch.where(T[None, :] <= 0, 1, -1), pred)
        bad = (pred != table).any(0)
        if bad.any():
            for j in bad.nonzero().flatten().tolist():
                T[j] = self._threshold_from_table(ks, table[:, j], int(sigma[j]), n_in)
            self.calibrated += int(bad.sum())
        return IntegerLayer(A.contiguous(), T, fold.sigma, fold.W)

    @staticmethod
    def _threshold_from_table(ks: torch.Tensor, col: torch.Tensor, sigma: int, n_in: int) -> int:
        """Smallest T with ``σ·k ≥ T ⇔ +1`` over the table (the BN is monotone in k)."""
        if sigma == 0:
            if (col == col[0]).all():
                return 0 if int(col[0]) > 0 else 1
            raise RuntimeError("a unit with BN scale 0 is not constant in float32")
        vals = sigma * ks
        pos = vals[col > 0]
        neg = vals[col < 0]
        if len(pos) and len(neg) and int(pos.min()) <= int(neg.max()):
            raise RuntimeError("torch's BN is not monotone on the integer grid")
        return int(pos.min()) if len(pos) else n_in + 1

    # ----------------------------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """Layer 1 as ±1 (int8), with the model's own float32 operations (bit-exact)."""
        lin, bn = self._lin1, self._bn1
        with torch.no_grad():
            xf = self._flat(x).to(lin.weight.device, torch.float32)
            pre = F.linear(xf, sign_pm1(lin.weight), lin.bias)
            out = F.batch_norm(pre, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                               0.0, bn.eps)
            return sign_pm1(out).cpu().to(torch.int8)

    def first_margins(self, x: torch.Tensor) -> torch.Tensor:
        """Folded float64 margins ``σ_j·(W_j·x − τ_j)`` of layer 1 (unit +1 iff ≥ 0).

        A constant unit (σ = 0) gets +inf (always +1) or -inf (always −1).
        """
        pre = self._flat(x).cpu().to(torch.float64) @ self.W1.T
        m = self.sigma1 * (pre - self.tau1)
        const = self.const1.to(torch.float64)
        return torch.where(self.sigma1 != 0, m, const * math.inf)

    def preact(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """``A·h`` (int32) of hidden layer ``index`` (0 = layer 2) for ±1 input ``h``.

        Computed with a float32 matmul: every partial sum is an integer of size ≤ fan-in, so
        the result is exact.
        """
        A = self.hidden[index].A
        return (h.to(torch.float32) @ A.T.to(torch.float32)).round().to(torch.int32)

    def next_layer(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Hidden layer ``index + 2`` as ±1 (int8) from layer ``index + 1``."""
        k = self.preact(index, h)
        return torch.where(k >= self.hidden[index].T, 1, -1).to(torch.int8)

    def forward_from(self, layer: int, h: torch.Tensor) -> list[torch.Tensor]:
        """Layers ``layer+1 .. L`` (1-based ``layer``) from ±1 layer ``layer``."""
        out = []
        for i in range(layer - 1, len(self.hidden)):
            h = self.next_layer(i, h)
            out.append(h)
        return out

    def forward_hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The L hidden layers as int8 ±1 tensors of shape (B, n_l)."""
        self.forwards += len(x)
        h1 = self.first_layer(x)
        return [h1, *self.forward_from(1, h1)]

    def logits_from_hidden(self, h_last: torch.Tensor) -> torch.Tensor:
        """``W_out·h_L + b_out`` (float32, with the model's own operation)."""
        return F.linear(h_last.to(torch.float32), self._W_out_f, self.b_out)

    def int_logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """The integer part ``W_out·h_L`` of the logits (int32)."""
        return (h_last.to(torch.float32) @ self._W_out_f.T).round().to(torch.int32)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (float32), equal to ``model(x)`` in eval mode."""
        return self.logits_from_hidden(self.forward_hidden(x)[-1])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)


__all__ = ["FIRST_LAYER_TOL", "SUPPORTED", "BNFold", "IntegerBNN", "IntegerLayer",
           "UnsupportedModelError", "fold_bn"]
