"""PGD++ / FGSM++ (NJS, HNS), the gradient identities they rely on, and the diagnostics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from factories import set_up

import zoo
from attacks import AttackContext, attack_spec
from attacks import pgdpp as pp
from attacks.diagnostics import gradient_diagnostics
from attacks.gradient import FixedTemperature
from bench.calibrate import attack_context
from zoo.models import MLP

PP_ATTACKS = [
    f"{base}-{variant}" for base in ("fgsm", "pgd-linf", "pgd-l2")
    for variant in ("njs", "njs-raw", "hns", "beta0.1", "dlr")
] + ["pgd-linf-r5"]


@pytest.fixture(scope="module")
def digits_bnn():
    model, _ = zoo.get_model("digits-mlp5x100-bnn-waq", progress=False)
    x, y = zoo.load_dataset("digits").test_subset(64)
    return model, x, y


@pytest.fixture(scope="module")
def masked_bnn():
    """A BNN-WQ whose float32 gradients vanish: plain PGD L∞ 0.1 leaves ~85% robust."""
    model, _ = zoo.get_model("mnist5k-mlp3x512-bnn-wq", progress=False)
    x, y = zoo.load_dataset("mnist5k").test_subset(200)
    return model, x, y


def _saturated_logits(n: int = 400, d: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(n, d, generator=gen) * torch.logspace(-1, 3, n)[:, None]
    y = logits.argmax(1)
    y[::3] = torch.randint(0, d, (len(y[::3]),), generator=gen)
    return logits, y


def test_temperatures_never_change_a_prediction(digits_bnn):
    logits, y = _saturated_logits()
    njs = pp.NJSScaler()
    state = {"beta1": 0.5, "betas": []}
    z = njs.scale(logits, y, state)
    assert torch.equal(z.argmax(1), logits.argmax(1))
    beta = state["betas"][0]
    assert (beta < 0.5).any() and (beta == torch.tensor(0.5)).any()  # β2 did kick in
    assert (beta > 0).all()
    fixed = FixedTemperature(0.1)
    assert torch.equal(fixed.scale(logits, y, None).argmax(1), logits.argmax(1))

    model, x, y = digits_bnn
    hns = pp.HNSScaler()
    state = hns.prepare(model, x, y)
    with torch.no_grad():
        out = model(x)
    assert (state["beta"] > 0).all() and (state["beta"] != 1).any()
    assert torch.equal(hns.scale(out, y, state).argmax(1), out.argmax(1))


@pytest.mark.parametrize("d", [2, 3, 10, 100])
def test_proposition_1_bound(d):
    gen = torch.Generator().manual_seed(d)
    a = torch.randn(300, d, generator=gen, dtype=torch.float64) * torch.logspace(
        -2, 2, 300, dtype=torch.float64)[:, None]
    gap = a.amax(1) - a.amin(1)
    top = a.argmax(1, keepdim=True)
    for rho in (0.4, 0.1, 0.01, 1e-4):  # c(ρ) > 0 needs ρ < 1 − 1/d
        beta = (1 - 1e-6) * pp.c_rho(rho, d) / gap
        p = torch.softmax(beta[:, None] * a, dim=1)
        miss = p.scatter(1, top, 0.0).sum(1)  # 1 − p_top without cancellation
        assert (miss > rho).all()
        # the bound is tight: one top logit, all others at the minimum
        extreme = torch.zeros(1, d, dtype=torch.float64)
        extreme[0, 0] = 1.0
        p = torch.softmax((1 + 1e-3) * pp.c_rho(rho, d) * extreme, dim=1)
        assert p[0, 1:].sum() <= rho
    assert pp.c_rho(0.01, 10) == pytest.approx(6.79, abs=5e-3)


def _tiny_nets():
    torch.manual_seed(0)
    nets = []
    for quant in ("ref", "bnn-wq"):
        net = MLP(6, [8, 8], 4, quant).double()
        with torch.no_grad():  # non-trivial BN statistics
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        nets.append(net.eval())
    return nets


@pytest.mark.parametrize("net", _tiny_nets(), ids=["ref", "bnn-wq"])
def test_gram_identity_matches_autograd_hessian(net):
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logits, jac = pp.logits_and_jacobian(net, x)
    gram = jac @ jac.transpose(1, 2)
    for i in range(len(x)):
        y = logits[i : i + 1].argmax(1)
        gap = float(logits[i].max() - logits[i].min())
        for beta in (0.05, 0.3, 1.0, 2.0 / gap, 8.0 / gap, 20.0 / gap):
            def loss(v, beta=beta, y=y):
                return F.cross_entropy(beta * net(v[None]), y)

            hess = torch.autograd.functional.hessian(loss, x[i])
            explicit = float((hess**2).sum())
            ours = float(pp.hessian_norm_sq(logits[i : i + 1], gram[i : i + 1],
                                            torch.tensor([[beta]], dtype=torch.float64)))
            assert explicit > 0
            assert ours == pytest.approx(explicit, rel=1e-6)


def test_hns_picks_the_argmax_of_the_explicit_hessian_norm():
    net = _tiny_nets()[1]
    x = torch.rand(1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    logits, jac = pp.logits_and_jacobian(net, x)
    y = logits.argmax(1)
    grid = pp.hns_grid(logits, grid_size=20)[0]
    norms = []
    for beta in grid.tolist():
        hess = torch.autograd.functional.hessian(
            lambda v, beta=beta: F.cross_entropy(beta * net(v[None]), y), x[0])
        norms.append(float((hess**2).sum()))
    best = max(range(len(norms)), key=norms.__getitem__)
    assert 0 < best < len(norms) - 1
    beta, fell_back = pp.hns_beta(logits, jac @ jac.transpose(1, 2), y, grid_size=20)
    assert not fell_back.any()
    assert float(beta[0]) == pytest.approx(float(grid[best]), rel=1e-12)


def test_njs_beta1_is_one_over_mean_singular_value(digits_bnn):
    model, x, _ = digits_bnn
    xs = x[:12]
    svs = []
    for xi in xs:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi)
        assert torch.allclose(pp.input_jacobian(model, xi[None])[0], jac.reshape(10, -1),
                              rtol=1e-5, atol=1e-6)
        svs.append(torch.linalg.svdvals(jac.reshape(10, -1)))
    expected = 1.0 / float(torch.cat(svs).double().mean())
    assert pp.njs_beta1(model, x, n_ref=12) == pytest.approx(expected, rel=1e-5)
    assert pp.njs_beta1(model, x[30:]) != pytest.approx(expected, rel=1e-5)  # other points
    # an attack that was not set up calibrates each batch on its own points (pixel coords)
    raw = pp.NJSScaler(coords="pixel", n_ref=12)
    assert raw.prepare(model, x, None)["beta1"] == pytest.approx(expected, rel=1e-5)
    assert pp.NJSScaler(beta1=0.25).prepare(model, x, None)["beta1"] == 0.25
    # set up: the context's reference images, computed once per context and kept
    context = AttackContext(reference_x=x[:12])
    raw.setup(model, context)
    assert raw.prepare(model, x[40:], None)["beta1"] == pytest.approx(expected, rel=1e-5)
    assert context.memo[("njs-beta1", "pixel")] == raw.prepare(model, x, None)["beta1"]


def test_njs_beta1_in_normalised_coordinates_is_the_references(digits_bnn):
    """The authors' networks read u = (x − μ)/σ, so their Jacobian is σ·∂f/∂x and their β1 is
    1/σ times the pixel-coordinate one; an attack takes it from the context it was set up
    with, beside the pixel one."""
    model, x, _ = digits_bnn
    with pytest.raises(ValueError, match="set the attack up first.*njs-raw"):
        pp.NJSScaler().prepare(model, x, None)  # the dataset's σ is not the model's to know
    pixel = pp.njs_beta1(model, x[:50])
    sigma = 0.3081
    normalised = pp.njs_beta1(model, x[:50], std=(sigma,))
    assert normalised == pytest.approx(pixel / sigma, rel=1e-5)
    context = AttackContext(reference_x=x[:50], std=(sigma,))
    scalers = pp.NJSScaler(), pp.NJSScaler(coords="pixel")
    for scaler in scalers:
        scaler.setup(model, context)
    assert scalers[0].prepare(model, x, None)["beta1"] == normalised
    assert scalers[1].prepare(model, x, None)["beta1"] == pixel
    assert pp.reference_beta1(model, AttackContext(reference_x=x[:50])) is None  # no σ
    with pytest.raises(ValueError, match="one positive σ per input channel"):
        pp.njs_beta1(model, x, std=(0.3, 0.3))


def test_njs_scales_each_channels_columns_by_its_sigma():
    """Per-channel σ (CIFAR-10): the Jacobian's columns of channel c are multiplied by σ_c."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).eval()
    x = torch.rand(5, 3, 4, 4)
    std = (0.2, 0.5, 1.5)
    w = model[1].weight.detach().double()  # the Jacobian of every point
    scale = torch.tensor(std, dtype=torch.float64).repeat_interleave(16)
    expected = 1.0 / float(torch.linalg.svdvals(w * scale).mean())
    assert pp.njs_beta1(model, x, std=std) == pytest.approx(expected, rel=1e-5)
    assert pp.njs_beta1(model, x) == pytest.approx(1.0 / float(torch.linalg.svdvals(w).mean()),
                                                   rel=1e-5)


def test_hns_is_invariant_to_a_uniform_input_rescaling(digits_bnn):
    """In u = (x − μ)/σ coordinates every Gram matrix J Jᵀ is σ² times larger; the squared
    Hessian norm of every grid point grows by σ⁴ and the chosen β stays."""
    model, x, y = digits_bnn
    logits, jac = pp.logits_and_jacobian(model, x)
    gram = jac @ jac.transpose(1, 2)
    beta, fell_back = pp.hns_beta(logits, gram, y)
    assert not fell_back.all()
    for sigma in (0.3081, 0.3759, 2.0):
        scaled, scaled_fell_back = pp.hns_beta(logits, gram * sigma ** 2, y)
        assert torch.equal(scaled, beta) and torch.equal(scaled_fell_back, fell_back)


def test_jacobian_fallback_without_batched_gradients(digits_bnn, monkeypatch):
    model, x, _ = digits_bnn
    batched = pp.input_jacobian(model, x[:16])
    grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    assert torch.allclose(pp.input_jacobian(model, x[:16]), batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PP_ATTACKS)
def test_attacks_stay_in_the_ball_and_box(digits_bnn, name):
    model, x, y = digits_bnn
    attack = set_up(name, model, zoo.load_dataset("digits"))
    eps = 1.0 if attack.norm == "l2" else 0.1
    result = attack(model, x, y, eps=eps)
    delta = (result.x_adv - x).flatten(1)
    size = delta.norm(dim=1) if attack.norm == "l2" else delta.abs().amax(1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    json.dumps(attack.config())
    json.dumps(attack_spec(name).defaults)
    if any(s in name for s in ("njs", "hns", "beta")):
        assert 0 < result.info["beta_min"] <= result.info["beta_mean"] <= result.info["beta_max"]


def test_hns_falls_back_to_one(digits_bnn, monkeypatch):
    model, x, y = digits_bnn
    wrong = (y + 1) % 10
    state = pp.HNSScaler().prepare(model, x, wrong)
    with torch.no_grad():
        misclassified = model(x).argmax(1) != wrong
    assert misclassified.all()
    assert (state["beta"] == 1).all() and state["fell_back"].all()

    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.5, 0.0]])
    y3 = torch.tensor([0, 0])
    beta, fell_back = pp.hns_beta(logits, torch.zeros(2, 3, 3), y3)  # zero Jacobian
    assert (beta == 1).all() and fell_back.all()
    grid = pp.hns_grid(logits)
    for shape, expect_one in ((lambda b: b, True), (lambda b: -b, True),
                              (lambda b: -(b - b[:, 37:38]) ** 2, False)):
        monkeypatch.setattr(pp, "hessian_norm_sq", lambda a, g, b, shape=shape: shape(b))
        beta, fell_back = pp.hns_beta(logits, torch.ones(2, 3, 3), y3)
        assert bool(fell_back.all()) is expect_one
        expected = torch.ones(2) if expect_one else grid[:, 37].float()
        assert torch.allclose(beta, expected)


def test_pgdpp_breaks_gradient_masking(masked_bnn):
    model, x, y = masked_bnn
    eps = 0.1

    def robust(name: str) -> float:
        x_adv = set_up(name, model, zoo.load_dataset("mnist5k"))(model, x, y, eps=eps).x_adv
        assert ((x_adv - x).abs().amax() <= eps + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
        model.eval()
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).double().mean())

    plain = robust("pgd-linf")
    assert plain > 0.6  # the premise: plain PGD is fooled by the masking
    for name in ("pgd-linf-njs", "pgd-linf-hns", "fgsm-hns"):
        assert robust(name) < plain - 0.4, name


def test_gradient_diagnostics(masked_bnn, digits_bnn):
    model, x, y = masked_bnn
    beta1 = pp.reference_beta1(model, attack_context(zoo.load_dataset("mnist5k"), "cpu"))
    diag = gradient_diagnostics(model, x[:100], y[:100], njs_beta1=beta1)
    json.dumps(diag, allow_nan=False)
    assert all(type(v) is float for v in diag.values())
    for metric in ("zero_grad_share", "jac_sv_mean", "jac_sv_std", "psi_norm", "grad_norm"):
        for suffix in ("", "_njs", "_hns"):
            assert math.isfinite(diag[metric + suffix])
    assert diag["njs_beta1"] == beta1
    assert diag["zero_grad_share"] > 0.5 and diag["zero_grad_share_njs"] == 0
    assert diag["zero_grad_share_hns"] == 0
    assert diag["grad_norm_njs"] > 100 * diag["grad_norm"]
    # β2 only ever lowers β1, so the scaled singular values are at most β1 times the raw ones
    assert diag["jac_sv_mean_njs"] <= diag["jac_sv_mean"] * diag["njs_beta1"] * (1 + 1e-6)
    digits_model, xd, yd = digits_bnn
    empty = gradient_diagnostics(digits_model, xd[:8], (yd[:8] + 1) % 10, njs_beta1=0.1)
    assert empty["n_correct"] == 0 and math.isnan(empty["psi_norm"])
