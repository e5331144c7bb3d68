"""Baseline attacks: threat-model invariants over a table of attacks, norms and ε."""

from __future__ import annotations

import math

import pytest
import torch

import attacks
from attacks.gradient import project, random_start
from bench.verify import distance
from results.errors import BadEpsilonError, UnknownNameError

BASELINES = [("fgsm", 0.1), ("fgsm", 0.3), ("pgd-linf", 0.05), ("pgd-linf", 0.3),
             ("pgd-l2", 0.5), ("pgd-l2", 2.0)]


@pytest.mark.parametrize(("name", "eps"), BASELINES)
@pytest.mark.parametrize("quant", ["ref", "bnn-wq", "bnn-waq"])
def test_candidates_stay_in_ball_and_box(name, eps, quant, digits_models, digits):
    model = digits_models[quant]
    x, y = digits.test_subset(100)
    attack = attacks.create_attack(name)
    out = attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(1)).x_adv
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(distance(out, x, attack.norm).max()) <= eps * (1 + 1e-6)
    assert not torch.equal(out, x)


def test_pgd_beats_fgsm_and_eps_zero_is_identity(digits_models, digits):
    model = digits_models["ref"]
    x, y = digits.test_subset(200)

    def acc(name: str, eps: float) -> float:
        adv = attacks.create_attack(name)(model, x, y, eps=eps).x_adv
        return (model(adv).argmax(1) == y).float().mean().item()

    assert acc("pgd-linf", 0.1) < acc("fgsm", 0.1) - 0.1
    assert acc("pgd-linf", 0.1) < acc("pgd-linf", 0.05)
    same = attacks.create_attack("pgd-linf")(model, x, y, eps=0.0).x_adv
    assert torch.equal(same, x)


def test_same_generator_seed_same_result(digits_models, digits):
    x, y = digits.test_subset(50)
    a = attacks.create_attack("pgd-l2")
    r1 = a(digits_models["bnn-waq"], x, y, eps=1.0, generator=torch.Generator().manual_seed(7))
    r2 = a(digits_models["bnn-waq"], x, y, eps=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(r1.x_adv, r2.x_adv)


@pytest.mark.parametrize(("norm", "eps"), [("linf", -0.1), ("linf", float("nan")),
                                           ("linf", 1.5), ("l2", float("inf")), ("l2", 9.0)])
def test_bad_eps_is_refused_with_the_allowed_range(norm, eps, digits_models, digits):
    x, y = digits.test_subset(4)  # 64 pixels: the largest L2 ε is 8
    name = "pgd-linf" if norm == "linf" else "pgd-l2"
    with pytest.raises(BadEpsilonError, match=r"must be a finite number in \[0, (1|8)\]"):
        attacks.create_attack(name)(digits_models["ref"], x, y, eps=eps)


def test_projection_is_joint_l2_then_box():
    x = torch.full((2, 3, 4, 4), 0.5)
    far = x + torch.randn(2, 3, 4, 4)
    p = project(far, x, 0.7, "l2")
    per_sample = (p - x).flatten(1).norm(dim=1)
    assert (per_sample <= 0.7 + 1e-6).all() and p.min() >= 0 and p.max() <= 1
    inside = x + 0.01
    assert torch.allclose(project(inside, x, 0.7, "l2"), inside)


def test_l2_random_start_is_inside_the_ball():
    x = torch.full((64, 1, 8, 8), 0.5)
    s = random_start(x, 1.0, "l2", torch.Generator().manual_seed(0))
    d = (s - x).flatten(1).norm(dim=1)
    assert (d <= 1.0 + 1e-6).all() and d.mean() > 0.9  # high dimension: near the sphere


def test_unknown_attack_lists_close_matches():
    with pytest.raises(UnknownNameError, match="pgd-linf"):
        attacks.create_attack("pgd-lin")


def test_registry_lists_baselines_with_norms():
    assert {"fgsm", "pgd-linf", "pgd-l2"} <= set(attacks.list_attacks())
    assert attacks.attack_spec("pgd-l2").norm == "l2"
    assert attacks.list_attacks("pgd-l*") == sorted(
        n for n in attacks.list_attacks() if n.startswith("pgd-l"))
    assert math.isclose(attacks.create_attack("pgd-linf").rel_step, 0.25)


def test_l2_direction_survives_gradients_whose_norm_underflows():
    from attacks.gradient import ascent_direction

    g = torch.zeros(3, 1, 4, 4)
    g[0, 0, 0, :2] = torch.tensor([3e-25, -4e-25])  # ‖g‖² underflows: torch's norm says 0
    g[1, 0, 1, 1] = 2.0
    assert float(g[0].flatten().norm()) == 0.0 and bool((g[0] != 0).any())
    d = ascent_direction(g, "l2")
    assert torch.allclose(d[0, 0, 0, :2], torch.tensor([0.6, -0.8]))
    assert float(d[1].norm()) == pytest.approx(1.0) and float(d[2].abs().sum()) == 0.0
    # the reference normalisation g / max(‖g‖, 1e-12), registered as pgd-l2-floor, stands still
    floor = attacks.create_attack("pgd-l2-floor")
    assert float(floor.direction(g)[0].abs().sum()) < 1e-12
    assert torch.allclose(floor.direction(g)[1], d[1])


def test_l2_pgd_moves_on_a_saturated_binarized_mlp(digits_models, digits):
    """Logits scaled ×10 saturate the softmax so that ∇ℓ is tiny but not zero: L2 PGD
    must still take full steps (it used to stand still when ‖∇ℓ‖ underflowed)."""

    class Hot(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 10 * self.inner(x)

    model = Hot(digits_models["ref"]).eval()
    x, y = digits.test_subset(60)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    tiny = (grad.flatten(1).norm(dim=1) == 0) & (grad.flatten(1) != 0).any(1)
    assert int(tiny.sum()) >= 5, "the test needs points whose gradient norm underflows"
    out = attacks.create_attack("pgd-l2")(model, x, y, eps=1.0).x_adv
    assert float(distance(out, x, "l2").max()) <= 1.0 + 1e-5
    with torch.no_grad():
        fooled = model(out).argmax(1) != y
    # measured: 0.97 of the points (0.15 with the underflowing normalisation)
    assert float(fooled.float().mean()) > 0.8


def test_registered_stands_in_for_a_block_and_restores_the_registry():
    from attacks import attack_spec, list_attacks, registered
    from results.vocabulary import Traits

    before = list_attacks()
    spec = attack_spec("fgsm")
    with registered("fgsm-test-only", spec.factory, description="test", traits=spec.traits,
                    **spec.defaults) as added:
        assert added.name in list_attacks() and added.norm == "linf"
    assert list_attacks() == before
    with registered("fgsm", spec.factory, description="one step more", traits=spec.traits,
                    replace=True, **{**spec.defaults, "steps": 2}):
        assert attack_spec("fgsm").defaults["steps"] == 2
    assert attack_spec("fgsm") is spec  # the registered attack is back
    with pytest.raises(ValueError, match="replace=True"), registered(
            "fgsm", spec.factory, description="x", traits=Traits("gradient", "fgsm")):
        pass
    assert attack_spec("fgsm") is spec
