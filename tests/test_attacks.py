"""Baseline attacks: threat-model invariants over a table of attacks, norms and ε."""

from __future__ import annotations

import math

import pytest
import torch

import attacks
from attacks.gradient import project, random_start
from bench.verify import distance
from zoo.errors import BadEpsilonError, UnknownNameError

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
