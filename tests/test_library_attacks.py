"""Library adapters (Foolbox DeepFool / Brendel-Bethge, pyautoattack APGD / Square / AutoAttack):
threat-model invariants, determinism, RNG isolation, starting points, verification.

Brendel-Bethge compiles its numba solver on the first call in a process (about 20 s), so its
tests are few and live in this one module.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attacks
from attacks.base import Attack, AttackResult
from attacks.library import draw_seed, nearest_training_starts
from attacks.registry import _ATTACKS, AttackSpec
from bench import runner
from bench.verify import distance, verify

N = 30
#: (attack, ε, overrides that keep the test fast; none for the deterministic runner checks)
MATRIX = [
    ("deepfool-linf", 0.1, {}),
    ("deepfool-l2", 1.0, {}),
    ("apgd-ce", 0.1, {}),
    ("apgd-dlr", 0.1, {}),
    ("square", 0.1, {"n_queries": 300}),
    # at 0.2 APGD-CE breaks every point, so the (slow) later components get nothing to do;
    # their chaining is tested with stand-in components below
    ("autoattack", 0.2, {}),
]
RNG_ATTACKS = ["apgd-ce", "apgd-dlr", "square", "autoattack"]


@pytest.fixture(scope="module")
def batch(digits, digits_models):
    """Correctly classified test points of the digits BNN-WAQ model."""
    model = digits_models["bnn-waq"]
    x, y = digits.test_subset(60)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:N], y[ok][:N]


@pytest.mark.parametrize(("name", "eps", "over"), MATRIX, ids=[m[0] for m in MATRIX])
def test_candidates_in_ball_and_box_and_deterministic(name, eps, over, batch):
    model, x, y = batch
    attack = attacks.create_attack(name, **over)
    outs = [attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(5)).x_adv
            for _ in range(2)]
    assert torch.equal(outs[0], outs[1]), "same seed, different candidates"
    verdict = verify(model, x, y, outs[0], eps=eps, norm=attack.norm)
    assert bool(verdict.in_ball.all()) and bool(verdict.in_box.all())
    assert verdict.rejected == 0
    assert int(verdict.success.sum()) > 0, f"{name} broke nothing at ε={eps}"


@pytest.mark.parametrize("name", ["deepfool-l2", "apgd-dlr", "autoattack"])
def test_same_seed_gives_identical_records(name, batch):
    model, x, y = batch
    clean = torch.ones(len(x), dtype=torch.bool)
    eps = {"deepfool-l2": 1.0, "apgd-dlr": 0.1, "autoattack": 0.2}[name]
    recs = [runner.attack_cell(model, x, y, clean, attack_name=name, eps=eps, seed=11,
                               device="cpu") for _ in range(2)]
    for r in recs:
        r.pop("seconds"), r.pop("seconds_per_sample")
    assert recs[0] == recs[1]
    assert recs[0]["status"] == "ok" and recs[0]["robust_acc"] < 1.0


@pytest.mark.parametrize("name", RNG_ATTACKS)
def test_global_rng_state_is_left_unchanged(name, batch):
    model, x, y = batch
    attack = attacks.create_attack(name, **({"n_queries": 100} if name == "square" else {}))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    attack(model, x[:8], y[:8], eps=0.2 if name == "autoattack" else 0.1,
           generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)


def test_autoattack_runs_its_components_in_order_on_the_points_left(batch, monkeypatch):
    """The standard ensemble's order and chaining, with stand-ins for the slow components."""
    from attacks.library import AutoAttackStandard

    model, x, y = batch
    calls = []

    def fake(aa, name, xb, yb):
        calls.append((name, len(xb), aa.seed))
        out = xb.clone()
        if name != "square":  # break the first remaining point: another class's input
            other = (y != yb[0]).nonzero()[0, 0]
            out[0] = x[other]
        return out

    monkeypatch.setattr(AutoAttackStandard, "_component", staticmethod(fake))
    res = attacks.create_attack("autoattack")(model, x[:6], y[:6], eps=1.0,
                                              generator=torch.Generator().manual_seed(3))
    assert [c[0] for c in calls] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [c[1] for c in calls] == [6, 5, 4, 3]
    assert {c[2] for c in calls} == {draw_seed(torch.Generator().manual_seed(3))}
    assert res.info["broken_by_apgd-ce"] == 1 and res.info["broken_by_square"] == 0
    assert torch.equal(res.x_adv[3:], x[3:6])


def test_library_attacks_are_registered_with_their_norms():
    expected = {"deepfool-linf": "linf", "deepfool-l2": "l2", "bba-linf": "linf",
                "bba-l2": "l2", "apgd-ce": "linf", "apgd-dlr": "linf", "square": "linf",
                "autoattack": "linf"}
    for name, norm in expected.items():
        assert attacks.attack_spec(name).norm == norm
    assert attacks.create_attack("square").uses_gradients is False
    assert attacks.create_attack("bba-l2").uses_gradients is True
    cfg = attacks.create_attack("apgd-ce").config()
    assert cfg["n_iter"] == 100 and cfg["n_restarts"] == 1 and cfg["loss"] == "ce"
    assert attacks.create_attack("square").config()["n_queries"] == 5000


# --------------------------------------------------------------------------- Brendel-Bethge


def test_bba_skips_samples_without_an_adversarial_start_and_attacks_the_rest(batch, digits):
    model, x, y = batch
    x, y = x[:12], y[:12]
    starts, found = nearest_training_starts(model, x, y, digits.train_x, "linf")
    assert bool(found.all())
    with torch.no_grad():
        assert bool((model(starts).argmax(1) != y).all())  # adversarial by construction
    starts[:4] = x[:4]  # marked valid, but not adversarial: must be dropped, not crash
    valid = torch.ones(len(x), dtype=torch.bool)
    valid[4:6] = False  # no start at all
    attack = attacks.create_attack("bba-linf", steps=100)  # one norm: one numba compilation
    attack.set_starts(starts, valid)
    eps = 0.3
    torch.manual_seed(4)
    before = torch.get_rng_state()
    out = attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    assert out.info["no_start"] == 6 and out.info["attacked"] + out.info["kept_start"] == 6
    assert torch.equal(out.x_adv[:6], x[:6])  # not attacked: the clean input
    verdict = verify(model, x, y, out.x_adv, eps=eps, norm="linf")
    assert bool(verdict.in_ball.all()) and bool(verdict.in_box.all())
    assert not verdict.success[:6].any()
    assert int(verdict.success[6:].sum()) > 0
    # without set_starts nothing is attacked, and the starts were consumed by the call
    again = attack(model, x, y, eps=eps)
    assert torch.equal(again.x_adv, x) and again.info["no_start"] == len(x)


def test_bba_in_the_runner_runs_last_and_starts_from_earlier_successes(digits, digits_models,
                                                                       monkeypatch):
    model = digits_models["bnn-waq"]
    spec = _ATTACKS["bba-linf"]  # 100 steps instead of 1,000: same code path, 10x faster
    monkeypatch.setitem(_ATTACKS, "bba-linf",
                        dataclasses.replace(spec, defaults={**spec.defaults, "steps": 100}))
    rows = list(runner.evaluate_cells(
        model, model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
        attacks=["bba-linf", "pgd-linf"], eps={"linf": [0.1]}, n=16, seed=0, device="cpu",
    ))
    assert [r.attack for r in rows] == ["pgd-linf", "bba-linf"]
    pgd, bba = rows
    assert bba.status == "ok", bba.error
    info = bba.info
    broken_by_pgd = pgd.n_attacked - sum(pgd.robust)
    assert info["starts_from_attacks"] == broken_by_pgd > 0
    assert info["starts_from_train"] + info["starts_from_attacks"] + info["starts_none"] == \
        bba.n_attacked
    assert info["kept_start"] == broken_by_pgd  # verified successes inside the ball are kept
    assert info["attacked"] == info["starts_from_train"] > 0  # the rest really ran
    assert all(b <= p for b, p in zip(bba.robust, pgd.robust, strict=True))
    assert bba.rejected == 0
    # 100 steps (+ binary search) for every point BB really ran on; none for kept starts
    assert bba.forwards_per_sample * bba.n_attacked >= 100 * info["attacked"]
    assert bba.backwards_per_sample * bba.n_attacked >= 100 * info["attacked"]


def test_bba_on_a_graph_cutting_model_is_an_error_cell(batch, digits):
    model, x, y = batch

    class GraphCut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, t):
            return self.inner(t.detach())

    pool = runner.StartPool(len(x), (digits.train_x, digits.train_y))
    out = runner.attack_cell(GraphCut().eval(), x, y, torch.ones(len(x), dtype=torch.bool),
                             attack_name="bba-linf", eps=0.1, seed=0, device="cpu", pool=pool)
    assert out["status"] == "error" and "grad" in out["error"]
    assert out["info"]["starts_from_train"] == len(x)


# --------------------------------------------------------------------------- verification


class OutOfBounds(Attack):
    """Deliberately bad: returns fooling points that break the threat model."""

    uses_gradients = False

    def __init__(self, *, norm: str = "linf", mode: str = "ball", pool: object = None) -> None:
        self.norm = norm
        self.mode = mode
        self._pool = pool

    def run(self, model, x, y, *, eps, generator):
        train_x, train_pred = self._pool
        x_adv = x.clone()
        for i in range(len(x)):  # a training point of another predicted class: fools the model
            x_adv[i] = train_x[(train_pred != y[i]).nonzero()[0, 0]]
        if self.mode == "box":  # inside a huge ball, 0.5 outside the box at one pixel
            x_adv.view(len(x), -1)[:, 0] = -0.5
        return AttackResult(x_adv, {"claimed_success": len(x)})


@pytest.mark.parametrize(("mode", "norm", "eps"), [("ball", "linf", 0.05), ("box", "l2", 8.0)])
def test_out_of_ball_or_box_candidates_are_rejected(mode, norm, eps, batch, digits,
                                                    monkeypatch):
    model, x, y = batch
    with torch.no_grad():
        pred = model(digits.train_x).argmax(1)
    pool = (digits.train_x, pred)
    spec = AttackSpec(f"bad-{mode}", OutOfBounds, norm, "test only",
                      {"norm": norm, "mode": mode, "pool": pool})
    monkeypatch.setitem(_ATTACKS, spec.name, spec)
    clean = torch.ones(len(x), dtype=torch.bool)
    out = runner.attack_cell(model, x, y, clean, attack_name=spec.name, eps=eps, seed=0,
                             device="cpu")
    assert out["status"] == "ok"
    assert out["rejected"] > 0
    assert out["robust"] == [1] * len(x)  # no rejected candidate counts as a success
    assert out["info"]["claimed_success"] == len(x)  # the attack's own claim is ignored
    adv = OutOfBounds(norm=norm, mode=mode, pool=pool).run(model, x, y, eps=eps,
                                                           generator=None).x_adv
    verdict = verify(model, x, y, adv, eps=eps, norm=norm)
    if mode == "ball":
        assert not verdict.in_ball.any() and float(distance(adv, x, norm).min()) > eps
    else:
        assert verdict.in_ball.all() and not verdict.in_box.any()


@pytest.mark.parametrize("name", ["deepfool-linf", "deepfool-l2"])
def test_deepfool_searches_once_for_all_eps_and_matches_single_eps_runs(name, digits,
                                                                        digits_models):
    model = digits_models["bnn-waq"]
    eps = {"linf": [0.05, 0.1, 0.2], "l2": [0.5, 1.0, 2.0]}
    rows = list(runner.evaluate_cells(
        model, model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
        attacks=[name], eps=eps, n=40, seed=0, device="cpu",
    ))
    norm = attacks.create_attack(name).norm
    assert [r.eps for r in rows] == eps[norm]
    assert all(r.status == "ok" and r.info["search_shared_across_eps"] for r in rows)
    # one search: every cell reports the same (whole) search cost
    assert len({(r.seconds, r.forwards_per_sample, r.backwards_per_sample) for r in rows}) == 1
    assert rows[0].forwards_per_sample > 2
    # ... and the same verdicts as running the attack separately at each ε
    x, y = digits.test_subset(40)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    for row, e in zip(rows, eps[norm], strict=True):
        single = runner.attack_cell(model, x, y, clean, attack_name=name, eps=e, seed=0,
                                    device="cpu")
        assert single["robust"] == row.robust and "search_shared_across_eps" not in single["info"]
    accs = [r.robust_acc for r in rows]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
