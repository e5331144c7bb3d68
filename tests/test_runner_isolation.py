"""Runner: failure isolation (graph-cutting models), pass counting, suite limits, best-known
accuracy over cells of different sample counts."""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd
import pytest
import torch
from factories import evaluate_attacks
from torch import nn

import attacks
import bench
import results
import zoo
from bench import engine
from bench.suites import Limit, Suite
from results.bestknown import current_runs
from results.schema import CellRecord, to_dict


class GraphCut(nn.Module):  # Brendel-Bethge's case is in test_library_attacks.py
    """Sees its input through ``detach``: no gradient reaches the input."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.detach())


def test_graph_cutting_model_gives_error_cells_for_gradient_attacks_only(digits,
                                                                        digits_models):
    model = GraphCut(digits_models["bnn-waq"]).eval()
    rows = {r.attack: r for r in evaluate_attacks(
        model, model_name="cut", model_sha256="0" * 64, suite="t", dataset=digits,
        attacks=["pgd-linf", "apgd-ce", "deepfool-linf", "square"],
        eps={"linf": [0.3]}, n=20, seed=0, device="cpu",
    )}
    for name in ("pgd-linf", "apgd-ce", "deepfool-linf"):
        r = rows[name]
        assert r.status == "error" and r.robust_acc is None, name
        assert "grad" in r.error, r.error  # the exception's message is kept
    sq = rows["square"]
    assert sq.status == "ok" and sq.error is None
    assert sq.robust_acc is not None and sq.robust_acc < sq.clean_acc
    assert sq.backwards_per_sample == 0 and sq.forwards_per_sample > 1
    # the model's parameters are left as they were (frozen only while attacking)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("k", [7, 25])
def test_pass_counts_of_pgd(k, digits, digits_models):
    model = digits_models["ref"]
    for p in model.parameters():
        p.grad = None  # other tests' attacks may have left parameter gradients
    x, y = digits.test_subset(k)
    clean = torch.ones(k, dtype=torch.bool)
    out = engine.attack_cell(model, x, y, clean, attack_name="pgd-linf", eps=0.1, seed=0,
                             device="cpu")
    assert out["status"] == "ok"
    # 20 steps with one forward and one backward each (the runner's verification of the last
    # iterate is not the attack's cost)
    assert out["forwards_per_sample"] == 20 and out["backwards_per_sample"] == 20
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients
    # HNS: one batched Jacobian at the start (a forward and d = 10 backward passes), whose
    # forward pass serves PGD's first step too
    hns = engine.attack_cell(model, x, y, clean, attack_name="pgd-linf-hns", eps=0.1, seed=0,
                             device="cpu")
    assert hns["forwards_per_sample"] == 20 and hns["backwards_per_sample"] == 30
    if k > 10:
        return
    apgd = engine.attack_cell(model, x, y, clean, attack_name="apgd-ce", eps=0.1, seed=0,
                              device="cpu")
    assert 100 <= apgd["forwards_per_sample"] <= 105
    assert 100 <= apgd["backwards_per_sample"] <= 102


def test_suite_limits_apply_to_the_suites_own_eps_and_n(monkeypatch):
    from bench import suites

    eps = {"linf": [0.1, 0.3], "l2": [1.0]}
    suite = Suite("t-lim", "digits", "digits-mlp5x100-ref", "fgsm,square,bba-*", eps, 50,
                  limits={"square": Limit(eps={"linf": [0.3]}),
                          "bba-*": Limit(eps={"linf": [0.1]}, n=20)})
    monkeypatch.setitem(suites.SUITES, suite.name, suite)
    kw = dict(suite="t-lim", dataset="digits", models=suite.models, attacks=suite.attacks)
    grid = bench.build_grid(**kw, eps=eps, n=50)
    assert grid.plan("fgsm") == ([0.1, 0.3], 50)
    assert grid.plan("square") == ([0.3], 50)
    assert grid.plan("bba-linf") == ([0.1], 20) and grid.plan("bba-l2") == ([1.0], 20)
    assert len(grid.cells()) == 2 + 1 + 1 + 1
    # explicit ε / n override the limits of that dimension
    other = bench.build_grid(**kw, eps={"linf": [0.1], "l2": [1.0]}, n=30)
    assert other.plan("square") == ([0.1], 30) and other.plan("bba-linf") == ([0.1], 30)
    with pytest.raises(ValueError, match="does not run"):
        Suite("bad", "digits", "*", "square", eps, 50, limits={"square": Limit({"linf": [0.2]})})


def test_model_scoped_limits_pick_the_first_rule_matching_model_and_attack(monkeypatch):
    from bench import suites

    eps = {"linf": [0.1, 0.3], "l2": [1.0]}
    rules = (
        ("square", Limit(eps={"linf": [0.3]}, n=10, models="*-bnn-*")),
        ("square", Limit(eps={"linf": [0.1]})),
        ("pgd-*", Limit(eps={"linf": [], "l2": []}, models="digits-mlp5x100-ref")),
    )
    suite = Suite("t-scope", "digits", "digits-mlp5x100-*", "fgsm,pgd-l2,square", eps, 50,
                  limits=rules)
    monkeypatch.setitem(suites.SUITES, suite.name, suite)
    grid = bench.build_grid(suite="t-scope", dataset="digits", models=suite.models,
                            attacks=suite.attacks, eps=eps, n=50)
    ref, waq = "digits-mlp5x100-ref", "digits-mlp5x100-bnn-waq"
    assert grid.plan("square", waq) == ([0.3], 10)
    assert grid.plan("square", ref) == ([0.1], 50)
    assert grid.plan("pgd-l2", ref) == ([], 50) and grid.plan("pgd-l2", waq) == ([1.0], 50)
    assert grid.plan("fgsm", ref) == ([0.1, 0.3], 50)
    per_model = {m: sum(c[0] == m for c in grid.cells()) for m in grid.models}
    assert per_model[ref] == 2 + 0 + 1 and per_model[waq] == 2 + 1 + 1


def test_limited_cells_run_on_a_prefix_and_combine(tmp_path, monkeypatch, digits_models):
    from bench import suites

    eps = {"linf": [0.1]}
    suite = Suite("t-pre", "digits", "digits-mlp5x100-ref", "fgsm,pgd-linf", eps, 40,
                  limits={"pgd-linf": Limit(n=15)})
    monkeypatch.setitem(suites.SUITES, suite.name, suite)
    grid = bench.build_grid(suite="t-pre", dataset="digits", models=suite.models,
                            attacks=suite.attacks, eps=eps, n=40, seed=1)
    bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    cells = results.load("t-pre", root=tmp_path)
    assert dict(zip(cells["attack"], cells["n"], strict=True)) == {"fgsm": 40, "pgd-linf": 15}
    assert cells["inputs_sha256"].nunique() == 2
    fgsm = cells.set_index("attack").loc["fgsm"]
    pgd = cells.set_index("attack").loc["pgd-linf"]
    assert pgd["clean_correct"] == fgsm["clean_correct"][:15]
    best = results.best_known(cells).iloc[0]
    expect = np.array(fgsm["robust"], dtype=bool)
    expect[:15] &= np.array(pgd["robust"], dtype=bool)
    assert best["n"] == 40 and best["best_known_acc"] == expect.mean()
    assert best["best_attack"] == "fgsm"  # chosen among the cells of the largest n
    again = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert again.ran == 0 and again.skipped == 2


def _cell(attack: str, robust: list[int], clean: list[int], **over) -> CellRecord:
    n = len(robust)
    kw = dict(key=f"k-{attack}-{n}", suite="s", dataset="digits", model="m",
              model_sha256="0" * 64, attack=attack, attack_config={}, norm="linf", eps=0.1,
              n=n, n_attacked=sum(clean), clean_acc=sum(clean) / n,
              robust_acc=sum(robust) / n, seconds=1.0, seconds_per_sample=0.1, device="cpu",
              seed=0, robust=robust, clean_correct=clean, inputs_sha256="x")
    kw.update(over)
    return CellRecord(**kw).validate()


def test_best_known_is_the_per_sample_minimum_over_attacks():
    rng = np.random.default_rng(0)
    clean = [int(v) for v in rng.random(50) < 0.9]
    vecs = [[int(c and r) for c, r in zip(clean, rng.random(50) < p, strict=True)]
            for p in (0.7, 0.5, 0.8)]
    cells = [_cell(a, v, clean, seconds_per_sample=s)
             for a, v, s in zip("abc", vecs, (0.3, 0.1, 0.2), strict=True)]
    cells.append(_cell("err", clean, clean, status="error", robust_acc=None, error="E: x"))
    best = results.best_known(pd.DataFrame([to_dict(c) for c in cells])).iloc[0]
    minimum = np.min(np.array(vecs), axis=0)
    assert best["best_known_acc"] == minimum.mean() and best["attacks"] == 3
    accs = {a: np.mean(v) for a, v in zip("abc", vecs, strict=True)}
    assert best["best_attack"] == min(accs, key=accs.get)
    for i, who in enumerate(best["broken_by"]):
        broken = [a for a, v in zip("bca", [vecs[1], vecs[2], vecs[0]], strict=True)
                  if clean[i] and not v[i]]
        assert who == (broken[0] if broken else "")  # cheapest attack first


def test_best_known_over_a_prefix_cell_and_a_mismatch_is_refused():
    clean = [1, 1, 1, 1, 0, 1]
    full = _cell("a", [1, 0, 1, 1, 0, 1], clean)
    prefix = _cell("b", [0, 1, 1], clean[:3])
    best = results.best_known(pd.DataFrame([to_dict(full), to_dict(prefix)])).iloc[0]
    assert best["n"] == 6 and best["best_known_acc"] == 3 / 6  # points 2, 3, 5 survive
    assert best["broken_by"] == ["b", "a", "", "", "", ""]
    assert best["unique_breaks"] == {"a": 1, "b": 1}
    wrong = _cell("c", [0, 0, 0], [1, 0, 1], n_attacked=2)
    with pytest.raises(ValueError, match="same test points"):
        results.best_known(pd.DataFrame([to_dict(full), to_dict(wrong)]))


def test_best_known_combines_only_cells_of_the_same_weights_inputs_and_seed():
    clean = [1, 1, 1, 1]
    t = "2026-0{}-01T00:00:00Z".format
    old = _cell("a", [0, 0, 0, 0], clean, model_sha256="1" * 64, created=t(1))
    new = _cell("b", [1, 0, 1, 1], clean, created=t(2))
    newer = _cell("c", [1, 1, 0, 1], clean, created=t(3))
    seed1 = _cell("d", [0, 1, 1, 1], clean, seed=1, created=t(4))
    old_seed1 = _cell("e", [1, 1, 1, 0], clean, model_sha256="1" * 64, seed=1, created=t(5))
    df = pd.DataFrame([to_dict(c) for c in (new, old, newer, seed1, old_seed1)])
    best = results.best_known(df).set_index(["model_sha256", "seed"])
    assert len(best) == 4  # one row per (weights, seed): nothing is mixed
    assert best.loc[("0" * 64, 0), "attacks"] == 2
    assert best.loc[("0" * 64, 0), "best_known_acc"] == 2 / 4
    assert best.loc[("0" * 64, 1), "best_known_acc"] == 3 / 4
    assert best.loc[("1" * 64, 0), "best_known_acc"] == 0.0
    # a board shows the current run: the latest weights (those of cell e) and their most
    # common seed (a tie between a's 0 and e's 1: the latest cell's)
    assert set(current_runs(df)["attack"]) == {"e"}
    df2 = pd.DataFrame([to_dict(c) for c in (new, old, newer, seed1)])
    assert set(current_runs(df2)["attack"]) == {"b", "c"}  # seed 0 has two cells, seed 1 one
    # same n, same weights and seed, other inputs: refused
    other = _cell("f", [1, 1, 1, 1], clean, inputs_sha256="y", created=t(6))
    with pytest.raises(ValueError, match="inputs_sha256"):
        results.best_known(pd.DataFrame([to_dict(c) for c in (new, other)]))


def test_default_suite_runs_every_attack_on_every_model_at_the_headline_eps():
    from bench.suites import DEFAULT_SUITE, get_suite

    suite = get_suite(DEFAULT_SUITE)
    grid = bench.build_grid(suite=suite.name, dataset=suite.dataset, models=suite.models,
                            attacks=suite.attacks, eps=suite.eps, n=suite.n)
    assert any("convnet" in m for m in grid.models) and any(m.endswith("-at") for m in grid.models)
    assert {"deepfool-linf", "deepfool-l2", "bba-linf", "bba-l2", "apgd-ce", "apgd-dlr",
            "square", "autoattack", "pgd-linf-njs", "pgd-linf-hns"} <= set(grid.attacks)
    headline = {"linf": 0.1, "l2": 1.5}
    cards = {m: zoo.model_spec(m) for m in grid.models}
    for model in grid.models:
        for attack in grid.attacks:
            values, n = grid.plan(attack, model)
            made = attacks.create_attack(attack)
            wanted = made.traits.applies_to
            if wanted and not all(fnmatch.fnmatchcase(str(getattr(cards[model], k)), p)
                                  for k, p in wanted.items()):
                assert values == [], (model, attack)  # not applicable: not run
                continue
            assert headline[made.norm] in values, (model, attack)
            assert 50 <= n <= suite.n
    # IPROP: every L∞ ε on all points of the two BNN-WAQ MLPs, nowhere else
    waq = [m for m in grid.models if grid.plan("iprop", m)[0]]
    # the verification-friendly 3x50 belongs to mnist5k-oracle, not to the default suite
    assert sorted(waq) == ["mnist5k-mlp3x512-bnn-waq", "mnist5k-mlp5x100-bnn-waq"]
    assert all(grid.plan("iprop", m) == (suite.eps["linf"], suite.n) for m in waq)


def test_the_planner_gives_an_attack_no_cells_on_models_its_traits_exclude():
    grid = bench.build_grid(suite="custom", dataset="digits", models="digits-mlp5x100-*",
                            attacks="iprop,fgsm", eps={"linf": [0.1, 0.3]}, n=20)
    cells = grid.cells()
    iprop = {m for m, a, _ in cells if a == "iprop"}
    assert iprop == {"digits-mlp5x100-bnn-waq"}  # BNN-WAQ MLPs only (its traits' applies_to)
    assert {m for m, a, _ in cells if a == "fgsm"} == set(grid.models)
    assert grid.plan("iprop", "digits-mlp5x100-ref") == ([], 20)
