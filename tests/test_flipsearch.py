"""The flip-search attack (attacks.flipsearch) and the first-layer reachability it stands on
(attacks.reach): closed-form pair conflicts against an LP, the integer tail against the torch
model, and the attack against the exact verifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import zoo
from attacks import create_attack
from attacks.flipsearch import IntegerTail, first_layer_ranges
from attacks.integer_bnn import FIRST_LAYER_TOL, IntegerBNN, UnsupportedModelError
from attacks.milp import BNNVerifier
from attacks.reach import Reach, box_steps, pair_conflicts
from bench.verify import verify
from zoo.models import MLP

ORACLE_MODEL = "mnist5k-mlp3x50-bnn-waq"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def oracle():
    """The verification-friendly 3 x 50 BNN-WAQ MLP, its first 120 mnist5k test points and
    which it classifies correctly."""
    model = zoo.get_model(ORACLE_MODEL, progress=False)[0].eval()
    x, y = zoo.load_dataset("mnist5k").test_subset(120)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return model, x, y, clean


def _free_units(verifier: BNNVerifier, x: torch.Tensor, eps: float):
    flat = x.reshape(-1).double().numpy()
    lo, hi = np.clip(flat - eps, 0, 1), np.clip(flat + eps, 0, 1)
    L, U = verifier.first_layer_bounds(lo, hi)
    free = np.flatnonzero((L < FIRST_LAYER_TOL) & (U > -FIRST_LAYER_TOL))
    return free, lo, hi


def test_pair_conflicts_equal_an_lp_for_every_pair(oracle):
    """Two signed first-layer units are compatible in closed form iff an LP finds an input of
    the box giving both signs with the tolerance cleared."""
    model, x, _, _ = oracle
    verifier = BNNVerifier(model)
    checked = conflicts = 0
    for i in (0, 7):
        free, lo, hi = _free_units(verifier, x[i], 0.03)
        free = free[:10]
        a, c = verifier.a1[free], verifier.c1[free]
        table = pair_conflicts(a, c, lo, hi, FIRST_LAYER_TOL)
        k = len(free)
        for p in range(2 * k):
            for q in range(2 * k):
                rows = []
                for lit in (p, q):
                    j, sign = lit % k, (1 if lit < k else -1)
                    rows.append((-sign * a[j], -sign * c[j] - FIRST_LAYER_TOL))
                A_ub = np.array([r[0] for r in rows])
                b_ub = np.array([r[1] for r in rows])
                lp = linprog(np.zeros(len(lo)), A_ub=A_ub, b_ub=b_ub,
                             bounds=list(zip(lo, hi, strict=True)), method="highs")
                infeasible = lp.status == 2
                assert table[p, q] == infeasible, (i, p, q, lp.status)
                checked += 1
                conflicts += int(infeasible)
    assert checked >= 400 and conflicts > 20  # both answers were exercised


def test_box_steps_realise_a_reachable_pattern(oracle):
    model, x, _, _ = oracle
    verifier = BNNVerifier(model)
    free, lo, hi = _free_units(verifier, x[0], 0.05)
    a, c = verifier.a1[free], verifier.c1[free]
    x0 = x[0].reshape(-1).double().numpy()
    clean = np.where(a @ x0 - c >= 0, 1.0, -1.0)
    target = clean.copy()
    target[0] = -target[0]  # one unstable unit flipped: reachable alone
    found = box_steps(a, c, target[None], lo, hi, x0, FIRST_LAYER_TOL, 200)
    assert found is not None
    assert np.all(found >= lo) and np.all(found <= hi)
    assert np.all(target * (a @ found - c) >= 2 * FIRST_LAYER_TOL)


def test_the_integer_tail_gives_the_model_logits_bit_for_bit(oracle):
    model, x, _, _ = oracle
    verifier = BNNVerifier(model)
    tail = IntegerTail(verifier)
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(64, *x.shape[1:], generator=gen)
    h1 = IntegerBNN(model).first_layer(xs).numpy().astype(np.float32)
    logits = tail.logits(h1 @ tail.A[0].T)
    with torch.no_grad():
        want = model(xs).numpy()
    assert np.array_equal(logits, want)


def test_batched_margin_ranges_equal_the_verifiers(oracle):
    model, x, _, _ = oracle
    verifier = BNNVerifier(model)
    flat = x[:5].reshape(5, -1).double().numpy()
    lo, hi = np.clip(flat - 0.02, 0, 1), np.clip(flat + 0.02, 0, 1)
    L, U = first_layer_ranges(verifier, lo, hi)
    for i in range(5):
        Li, Ui = verifier.first_layer_bounds(lo[i], hi[i])
        np.testing.assert_allclose(L[i], Li, atol=1e-9)
        np.testing.assert_allclose(U[i], Ui, atol=1e-9)


def test_it_finds_the_points_the_verifier_breaks_and_never_beats_a_proof(oracle):
    """L∞ 0.01 on the oracle model: every point the exact verifier breaks is broken here too
    (9 in 10 is the published goal), no point it proves robust is, and every candidate passes
    the benchmark's own check (ε-ball, [0, 1], misclassified)."""
    model, x, y, clean = oracle
    eps = 0.01
    idx = clean.nonzero().squeeze(1)
    verifier = BNNVerifier(model, time_limit=30.0)
    truth = [verifier.verify(x[i], int(y[i]), eps).status for i in idx.tolist()]
    assert "unknown" not in truth
    attack = create_attack("flip-search-linf")
    result = attack(model, x[idx], y[idx], eps=eps)
    ok = verify(model, x[idx], y[idx], result.x_adv, eps=eps, norm="linf").success.numpy()
    broken = np.array([t == "broken" for t in truth])
    assert broken.sum() >= 15  # the test exercises real breaks
    assert ok[broken].mean() >= 0.9, f"found {ok[broken].sum()} of {broken.sum()}"
    assert not ok[~broken].any(), "broke a point the verifier proved robust"
    assert result.info["claimed_success"] == int(ok.sum())


def test_it_is_deterministic_and_ignores_the_seed(oracle):
    model, x, y, clean = oracle
    idx = clean.nonzero().squeeze(1)[:40]
    attack = create_attack("flip-search-linf")
    a = attack(model, x[idx], y[idx], eps=0.02,
               generator=torch.Generator().manual_seed(1)).x_adv
    b = attack(model, x[idx], y[idx], eps=0.02,
               generator=torch.Generator().manual_seed(2)).x_adv
    assert torch.equal(a, b)


def test_it_refuses_models_without_an_integer_view():
    model = MLP(12, [8], 3, "bnn-wq").eval()
    with pytest.raises(UnsupportedModelError, match="bnn-waq"):
        create_attack("flip-search-linf")(model, torch.rand(2, 12), torch.tensor([0, 1]),
                                          eps=0.1)


@pytest.mark.parametrize("bad", [{"leaf_units": 0}, {"leaf_units": 21}, {"max_leaves": 0},
                                 {"max_lps": -1}, {"batch": 0}, {"steps": 0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match="flip search needs"):
        create_attack("flip-search-linf", **bad)


def test_the_verifiers_pair_conflicts_rule_out_only_unreachable_patterns(oracle):
    """With ``pairs`` a Reach flags a pattern without an LP; every flagged pattern must be
    unreachable even within the tolerance (else a proof could be wrong)."""
    model, x, _, _ = oracle
    verifier = BNNVerifier(model)
    free, lo, hi = _free_units(verifier, x[1], 0.03)
    x0 = x[1].reshape(-1).double().numpy()
    L, U = verifier.first_layer_bounds(lo, hi)
    args = (verifier.a1[free], verifier.c1[free], lo, hi, L[free], U[free], x0,
            FIRST_LAYER_TOL)
    with_pairs, lp_only = Reach(*args, pairs=True), Reach(*args)
    gen = np.random.default_rng(0)
    clean = with_pairs.clean_signs()
    patterns = np.repeat(clean[None], 120, axis=0)  # clean signs with 1 to 4 flips
    for row in patterns:
        flip = gen.choice(len(free), size=gen.integers(1, 5), replace=False)
        row[flip] = -row[flip]
    flagged = with_pairs.conflicted(patterns)
    assert 0 < flagged.sum() < len(patterns)  # both answers occur
    for p in patterns[flagged]:
        assert not lp_only.feasible(p)
