"""The fast attack loop computes exactly (bit for bit) what the plain textbook loop computes.

The loop of :class:`attacks.gradient.GradientAttack` works in place in preallocated buffers,
and :func:`attacks.pgdpp.logits_and_jacobian` picks between a vmapped and a looped backward
pass; neither may change a single bit of any result.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from factories import set_up

import zoo
from attacks import pgdpp as pp
from attacks.gradient import (
    GradientAttack,
    ascent_direction,
    ce_loss,
    ce_sum,
    ce_sum_grad,
    dlr_loss,
    kept_rows,
    project,
    random_start,
    step_into,
)
from zoo.convnets import VGGNet
from zoo.models import MLP


def _grads(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gradients as attacks meet them: zeros, entries whose squares underflow, huge ones."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(shape, generator=gen)
    g[torch.rand(shape, generator=gen) < 0.3] = 0.0
    g[1] *= 1e-24  # ‖g‖ underflows to 0 in float32
    g[2] *= 1e30
    g[3] = 0.0  # no gradient at all
    return g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.05, 0.1, 8 / 255, 0.3])
def test_linf_random_start_is_the_plain_expression_bit_for_bit(eps, dtype):
    """The in-place random start is ``clamp(x + ε·(2u − 1), 0, 1)`` with the same draws."""
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=dtype)
    x[:, :, :3] = 0.0  # on the faces of [0, 1]: the clamp acts
    x[:, :, -3:] = 1.0
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
    expected = (x + eps * (u * 2 - 1)).clamp(0, 1)
    out = random_start(x, eps, "linf", torch.Generator().manual_seed(9))
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(out.view(-1).view(bits), expected.view(-1).view(bits))


@pytest.mark.parametrize("norm,eps,rel_step", [("linf", 0.1, 0.25), ("linf", 0.3, 1.0),
                                               ("l2", 1.5, 0.125), ("l2", 0.5, 1.0)])
def test_step_into_is_the_plain_expression_bit_for_bit(norm, eps, rel_step):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 9, 9, generator=gen)
    x[:, :, :2] = 0.0  # points on the box's faces
    x[:, :, -2:] = 1.0
    x_adv = random_start(x, eps, norm, gen)
    step = rel_step * eps
    for seed in range(3):
        g = _grads(x.shape, seed)
        expected = project(x_adv + step * ascent_direction(g, norm), x, eps, norm)
        out = step_into(torch.empty_like(x), x_adv, g, x, step, eps, norm)
        assert torch.equal(out, expected)
        x_adv = out


def _textbook(attack: GradientAttack, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              eps: float, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loop written plainly (a fresh tensor per operation, boolean-mask bookkeeping), every
    point for every step (no early stopping)."""
    loss_fn = ce_loss if attack.loss == "ce" else dlr_loss
    best = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool)
    states = []
    for r in range(attack.restarts):
        todo = (~broken).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        xs, ys = x[todo], y[todo]
        x_adv = random_start(xs, eps, attack.norm, gen)
        state = attack.scaler.prepare(model, x_adv, ys)
        found, success = x_adv.clone(), torch.zeros(len(xs), dtype=torch.bool)
        for _ in range(attack.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            logits = model(x_adv)
            newly = (logits.detach().argmax(1) != ys) & ~success
            found[newly] = x_adv.detach()[newly]
            success |= newly
            loss = loss_fn(attack.scaler.scale(logits, ys, state), ys).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + attack.rel_step * eps
                            * ascent_direction(grad, attack.norm), xs, eps, attack.norm)
        if r < attack.restarts - 1:  # the last restart's last iterate is left to the caller
            with torch.no_grad():
                newly = (model(x_adv).argmax(1) != ys) & ~success
            found[newly] = x_adv[newly]
            success |= newly
        states.append(state)
        best[todo] = torch.where(success.view(-1, 1, 1, 1), found, x_adv)
        broken[todo] |= success
    return best, {"claimed_success": int(broken.sum()), **attack.scaler.stats(states)}


@pytest.mark.parametrize("name,eps", [
    ("fgsm", 0.1), ("pgd-linf", 0.1), ("pgd-l2", 0.5), ("pgd-linf-dlr", 0.1),
    ("pgd-linf-njs", 0.1), ("pgd-linf-njs-raw", 0.1), ("pgd-linf-hns", 0.1), ("pgd-l2-hns", 0.5),
    ("fgsm-hns", 0.2), ("pgd-linf-r5", 0.05), ("pgd-linf-beta0.1", 0.1),
])
@pytest.mark.parametrize("early_stop", [True, False])
def test_attack_loop_is_the_textbook_loop_bit_for_bit(name, eps, early_stop):
    """With early stopping the candidates are the same bits; only the temperature statistics,
    taken over the steps the attack made, may differ."""
    model, _ = zoo.get_model("digits-mlp5x100-bnn-waq", progress=False)
    model.eval()
    x, y = zoo.load_dataset("digits").test_subset(48)  # above MIN_ROWS: the batch shrinks
    attack = set_up(name, model, zoo.load_dataset("digits"), early_stop=early_stop)
    result = attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(5))
    expected, info = _textbook(attack, model, x, y, eps, torch.Generator().manual_seed(5))
    assert torch.equal(result.x_adv, expected)
    if early_stop:
        assert result.info["claimed_success"] == info["claimed_success"]
    else:
        assert result.info == info
    assert 0 < info["claimed_success"] < len(x)  # a test that can tell success bookkeeping apart


@pytest.mark.parametrize("beta", [None, 0.1, "per-sample"])
def test_closed_form_ce_gradient_is_autograds_bit_for_bit(beta):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(64, 10, generator=gen) * torch.logspace(-3, 3, 64)[:, None]  # saturated too
    y = torch.randint(0, 10, (64,), generator=gen)
    if beta == "per-sample":
        beta = torch.rand(64, 1, generator=gen) * 5
    zg = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(ce_sum(zg if beta is None else zg * beta, y), zg)
    assert torch.equal(ce_sum_grad(z, y, beta), expected)


def _small_models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    convs = [VGGNet((4, "M", 8, "M"), (16,), in_channels=1, image_size=8, num_classes=10,
                    quant=q) for q in ("ref", "bnn-wq", "bnn-waq")]
    mlps = [MLP(64, [32, 32], 10, q) for q in ("ref", "bnn-waq")]
    models = convs + mlps
    for m in models:  # BN statistics that are not the identity
        m.train()
        with torch.no_grad():
            m(torch.rand(32, 1, 8, 8))
        m.eval()
    return models


def test_vmapped_and_looped_jacobians_agree_bit_for_bit(monkeypatch):
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for model in _small_models():
        assert pp._vmapped_backward_pays(model) == isinstance(model, MLP)
        logits_a, jac_a = pp.logits_and_jacobian(model, x)
        other_path = not pp._vmapped_backward_pays(model)
        monkeypatch.setattr(pp, "_vmapped_backward_pays", lambda m, v=other_path: v)
        logits_b, jac_b = pp.logits_and_jacobian(model, x)
        monkeypatch.undo()
        assert torch.equal(logits_a, logits_b) and torch.equal(jac_a, jac_b)
        assert float(jac_a.abs().max()) > 0


def test_both_jacobian_paths_count_one_forward_and_d_backward_passes(monkeypatch):
    from bench.instrument import CountingModel

    x = torch.rand(5, 1, 8, 8)
    for model in _small_models()[1:4]:
        counted = CountingModel(model).eval()
        pp.logits_and_jacobian(counted, x)
        assert (counted.forwards, counted.backwards) == (5, 50)


@pytest.mark.parametrize("name,passes", [
    ("pgd-linf", (20, 20)),  # 20 steps; the last iterate is left to the benchmark's check
    ("pgd-linf-hns", (20, 30)),  # the Jacobian's forward pass serves the first step too
    ("fgsm-hns", (1, 11)),
    ("pgd-linf-njs", (20, 20)),
])
def test_passes_per_point(name, passes):
    """Forward and backward passes per attacked point, as the benchmark counts them: no pass
    that does not change a result."""
    from bench.instrument import CountingModel

    model, _ = zoo.get_model("digits-mlp5x100-bnn-waq", progress=False)
    x, y = zoo.load_dataset("digits").test_subset(16)
    counted = CountingModel(model).eval()
    attack = set_up(name, model, zoo.load_dataset("digits"))
    attack(counted, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert (counted.forwards / len(x), counted.backwards / len(x)) == passes


def test_kept_rows_keeps_every_unfinished_point_and_at_least_min_rows():
    done = torch.zeros(100, dtype=torch.bool)
    assert kept_rows(done, 32) is None  # nothing finished: nothing to drop
    done[::2] = True
    assert torch.equal(kept_rows(done, 32), torch.arange(1, 100, 2))
    done[:90] = True  # 5 points left: topped up with the first finished ones, in batch order
    keep = kept_rows(done, 32)
    assert len(keep) == 32 and torch.equal(keep, keep.sort().values)
    assert set(range(91, 100, 2)) <= set(keep.tolist())
    assert kept_rows(done[:20], 32) is None  # a batch below MIN_ROWS never shrinks
    assert kept_rows(done[:32], 32) is None


@pytest.mark.parametrize("name,eps", [("pgd-linf-njs", 0.1), ("pgd-l2-hns", 1.5),
                                      ("pgd-linf-r5", 0.1), ("pgd-linf-dlr", 0.05)])
def test_early_stopping_saves_passes_and_keeps_every_candidate(name, eps):
    """On a shipped mnist5k model, with the batch shrinking from 128 rows to MIN_ROWS: every
    candidate is the same bits as when every point runs every step, for fewer passes."""
    from bench.instrument import CountingModel

    model, _ = zoo.get_model("mnist5k-mlp3x512-bnn-waq", progress=False)
    data = zoo.load_dataset("mnist5k")
    x, y = data.test_subset(128)
    out, passes = {}, {}
    for early_stop in (True, False):
        counted = CountingModel(model.eval())
        attack = set_up(name, model, data, early_stop=early_stop)
        result = attack(counted, x, y, eps=eps, generator=torch.Generator().manual_seed(1))
        out[early_stop], passes[early_stop] = result, (counted.forwards, counted.backwards)
    assert torch.equal(out[True].x_adv, out[False].x_adv)
    assert out[True].info["claimed_success"] == out[False].info["claimed_success"] > 10
    assert passes[True][0] < passes[False][0] and passes[True][1] < passes[False][1]


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 1e4])
def test_njs_beta_is_the_plain_expression_bit_for_bit(scale):
    """The in-place NJS temperature, with its shortcut when no sample is confident, gives the
    bits of the formula written plainly (saturated and unsaturated logits alike)."""
    gen = torch.Generator().manual_seed(4)
    for beta1 in (0.01, 0.3, 1 / 0.3081):
        a = torch.randn(300, 10, generator=gen) * scale
        y = torch.randint(0, 10, (300,), generator=gen)
        confident = torch.exp((a - a.gather(1, y[:, None])) * beta1).sum(1) <= 1 / (1 - 0.01)
        gap = (a.amax(1) - a.amin(1)).clamp_min(torch.finfo(a.dtype).tiny)
        plain = torch.where(confident, pp.c_rho(0.01, 10) / gap, beta1)
        assert torch.equal(pp.njs_beta(a, y, beta1), plain)
