"""Library adapters (Foolbox DeepFool / Brendel-Bethge, pyautoattack APGD / Square / AutoAttack):
threat-model invariants, determinism, RNG isolation, starting points, verification.

Brendel-Bethge compiles its numba solver on the first call in a process (about 20 s), so its
tests are few and live in this one module.
"""

from __future__ import annotations

import pytest
import torch
from factories import evaluate_attacks

import attacks
from attacks.base import Attack, AttackResult
from attacks.library import draw_seed, nearest_training_starts
from bench import engine
from bench.calibrate import attack_context
from bench.verify import distance, verify
from results.vocabulary import Traits

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
    recs = [engine.attack_cell(model, x, y, clean, attack_name=name, eps=eps, seed=11,
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


@pytest.mark.slow
def test_bba_starts_from_its_own_init_else_a_training_point(batch, digits):
    model, x, y = batch
    x, y = x[:12], y[:12]
    starts, found = nearest_training_starts(model, x, y, digits.train_x, "linf")
    assert bool(found.all())
    with torch.no_grad():
        assert bool((model(starts).argmax(1) != y).all())  # adversarial by construction
    attack = attacks.create_attack("bba-linf", steps=100)  # one norm: one numba compilation
    eps = 0.3
    torch.manual_seed(4)
    before = torch.get_rng_state()
    out = attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    info = out.info
    assert info["starts_from_init"] + info["starts_from_train"] + info["starts_none"] == len(x)
    assert info["starts_from_init"] > 0 and info["attacked"] == len(x) - info["starts_none"]
    verdict = verify(model, x, y, out.x_adv, eps=eps, norm="linf")
    assert bool(verdict.in_ball.all()) and bool(verdict.in_box.all())
    assert int(verdict.success.sum()) > 0
    # the same seed gives the same candidates; the init does not depend on any other attack
    again = attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.x_adv, out.x_adv)
    # where the init finds nothing, the start is the nearest training point of another class:
    # uniform noise falls into few classes, so take test points of the class noise falls into
    with torch.no_grad():
        noise = torch.rand((200, *x.shape[1:]), generator=torch.Generator().manual_seed(1))
        c = int(model(noise).argmax(1).mode().values)
        xt, yt = digits.test_subset(len(digits.test_y))
        mine = (yt == c) & (model(xt).argmax(1) == yt)
    xc, yc = xt[mine][:6], yt[mine][:6]
    one = attacks.create_attack("bba-linf", steps=100, init_directions=1, init_steps=10)
    one.setup(model, attacks.AttackContext(train_x=digits.train_x))
    s, sel, counts = one.starts(model, xc, yc, torch.Generator().manual_seed(0))
    assert counts["starts_from_train"] > 0 and counts["starts_none"] == 0, counts
    with torch.no_grad():
        assert bool((model(s[sel]).argmax(1) != yc[sel]).all())
    one.setup(model, attacks.AttackContext())  # no training points: those samples have no start
    _, sel, counts = one.starts(model, xc, yc, torch.Generator().manual_seed(0))
    assert counts["starts_from_train"] == 0 and counts["starts_none"] > 0
    assert len(sel) == counts["starts_from_init"]


def _fast_bba(plugin_attack) -> None:
    spec = attacks.attack_spec("bba-linf")  # 100 steps instead of 1,000: same code path
    plugin_attack("bba-linf", spec.factory, description=spec.description, traits=spec.traits,
                  replace=True, **{**spec.defaults, "steps": 100})


@pytest.mark.slow
def test_a_bba_cell_gives_the_same_result_alone_and_after_pgdpp(digits, digits_models,
                                                               plugin_attack):
    """BBA is BBA on its own: its cell does not depend on which cells ran before it."""
    _fast_bba(plugin_attack)
    model = digits_models["bnn-waq"]
    kw = dict(model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
              eps={"linf": [0.1]}, n=16, seed=0, device="cpu")
    alone = list(evaluate_attacks(model, attacks=["bba-linf"], **kw))
    after = list(evaluate_attacks(model, attacks=["pgd-linf-njs", "pgd-linf", "bba-linf"],
                                       **kw))
    assert [r.attack for r in after] == ["pgd-linf-njs", "pgd-linf", "bba-linf"]
    a, b = alone[0], after[-1]
    assert a.status == b.status == "ok", (a.error, b.error)
    assert a.key == b.key and a.robust == b.robust
    assert {k: v for k, v in a.info.items()} == {k: v for k, v in b.info.items()}
    info = a.info
    assert info["starts_from_init"] + info["starts_from_train"] + info["starts_none"] == \
        a.n_attacked
    assert a.rejected == 0
    # 100 steps (+ binary search) for every point BB really ran on
    assert a.forwards_per_sample * a.n_attacked >= 100 * info["attacked"]
    assert a.backwards_per_sample * a.n_attacked >= 100 * info["attacked"]


@pytest.mark.slow
def test_bba_on_a_graph_cutting_model_is_an_error_cell(batch, digits):
    model, x, y = batch

    class GraphCut(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, t):
            return self.inner(t.detach())

    out = engine.attack_cell(GraphCut().eval(), x, y, torch.ones(len(x), dtype=torch.bool),
                             attack_name="bba-linf", eps=0.1, seed=0, device="cpu",
                             context=attack_context(digits, "cpu"))
    assert out["status"] == "error" and "grad" in out["error"]


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
                                                    plugin_attack):
    model, x, y = batch
    with torch.no_grad():
        pred = model(digits.train_x).argmax(1)
    pool = (digits.train_x, pred)
    spec = plugin_attack(f"bad-{mode}", OutOfBounds, description="test only",
                         traits=Traits("gradient-free", f"bad-{mode}", uses_gradients=False),
                         norm=norm, mode=mode, pool=pool)
    clean = torch.ones(len(x), dtype=torch.bool)
    out = engine.attack_cell(model, x, y, clean, attack_name=spec.name, eps=eps, seed=0,
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
    rows = list(evaluate_attacks(
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
        single = engine.attack_cell(model, x, y, clean, attack_name=name, eps=e, seed=0,
                                    device="cpu")
        assert single["robust"] == row.robust and "search_shared_across_eps" not in single["info"]
    accs = [r.robust_acc for r in rows]
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]
