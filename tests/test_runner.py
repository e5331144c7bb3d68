"""Runner: records per cell, resume without recomputation, interruption, determinism."""

from __future__ import annotations

import pytest
import torch

import bench
import results
from bench import engine
from results.errors import BadEpsilonError, QBenchError, UnknownNameError

EPS = {"linf": [0.1, 0.3], "l2": [1.0]}


def small_grid(**over) -> bench.Grid:
    kw = dict(suite="t", dataset="digits", models="digits-mlp5x100-ref,digits-mlp5x100-bnn-waq",
              attacks="fgsm,pgd-l2", eps=EPS, n=60, seed=3)
    kw.update(over)
    return bench.build_grid(**kw)


def test_grid_records_every_cell_then_resumes(tmp_path, digits_models):
    grid = small_grid()
    assert len(grid.cells()) == 2 * (2 + 1)
    first = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert first.ran == 6 and first.skipped == 0 and first.errors == 0
    df = results.load("t", root=tmp_path)
    assert len(df) == 6 and set(df["attack"]) == {"fgsm", "pgd-l2"}
    assert (df["robust_acc"] <= df["clean_acc"]).all()
    assert (df["n"] == 60).all() and df["seconds_per_sample"].gt(0).all()
    assert df["versions"].map(lambda v: "torch" in v).all()
    models = results.load_models("t", root=tmp_path)
    assert sorted(models["model"]) == sorted(grid.models)

    lines = results.cells_path("t", tmp_path).read_text().count("\n")
    again = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert again.ran == 0 and again.skipped == 6
    assert results.cells_path("t", tmp_path).read_text().count("\n") == lines

    forced = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False,
                            force=True)
    assert forced.ran == 6
    df2 = results.load("t", root=tmp_path)
    assert len(df2) == 6  # the newer records replace the old ones
    # Same seed, same weights, same inputs: identical per-sample outcomes.
    a = df.set_index("key")["robust"].to_dict()
    b = df2.set_index("key")["robust"].to_dict()
    assert a == b


def test_interrupted_run_keeps_finished_cells(tmp_path, monkeypatch, digits_models):
    grid = small_grid(models="digits-mlp5x100-ref")
    real = engine.attack_cell
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "attack_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert len(results.load("t", root=tmp_path)) == 2
    monkeypatch.setattr(engine, "attack_cell", real)
    rest = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert rest.ran == 1 and rest.skipped == 2


def test_a_different_seed_is_a_different_cell(tmp_path, digits_models):
    g1 = small_grid(models="digits-mlp5x100-ref", attacks="fgsm", eps={"linf": [0.1]})
    g2 = small_grid(models="digits-mlp5x100-ref", attacks="fgsm", eps={"linf": [0.1]}, seed=4)
    bench.run_grid(g1, device="cpu", results_root=tmp_path, progress=False)
    s2 = bench.run_grid(g2, device="cpu", results_root=tmp_path, progress=False)
    assert s2.ran == 1


@pytest.mark.parametrize(("over", "error", "message"), [
    ({"models": "digits-mlp5x100-rfe"}, UnknownNameError, "digits-mlp5x100-ref"),
    ({"attacks": "pgd-inf"}, UnknownNameError, "pgd-linf"),
    ({"eps": {"linf": [-0.1], "l2": [1.0]}}, BadEpsilonError, "out of range"),
    ({"eps": {"linf": [0.1]}}, BadEpsilonError, "no ε given for the l2 norm"),
    ({"n": 5000}, QBenchError, "n must be between 1 and 300"),
    ({"models": "mnist5k-mlp5x100-ref"}, QBenchError, "not trained on dataset"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, over, error, message):
    path = results.cells_path("t", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    with pytest.raises(error, match=message):
        small_grid(**over)
    assert path.read_text() == ""


def test_evaluate_a_model_the_user_brings(digits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(digits.train_x), digits.train_y).backward()
        opt.step()
    df = bench.evaluate(model, dataset="digits", attacks=["fgsm", "pgd-linf"], eps=[0.05, 0.2],
                        n=100, device="cpu", name="my-linear")
    assert len(df) == 4 and set(df["model"]) == {"my-linear"}
    assert df["clean_acc"].iloc[0] > 0.85
    by = df.set_index(["attack", "eps"])["robust_acc"]
    assert by["pgd-linf", 0.2] < by["pgd-linf", 0.05] <= df["clean_acc"].iloc[0]
    assert by["pgd-linf", 0.2] < 0.2


def test_a_candidate_equal_to_its_clean_input_is_never_a_success(digits_models, digits):
    from bench.verify import predict, verify

    model = digits_models["bnn-waq"]
    x, y = digits.test_subset(50)
    wrong = (predict(model, x) + 1) % 10  # labels the clean inputs contradict
    verdict = verify(model, x, wrong, x.clone(), eps=0.1, norm="linf")
    assert not verdict.success.any() and not verdict.misclassified.any()
    moved = x.clone()
    moved[:, 0, 0, 0] = (moved[:, 0, 0, 0] + 1e-3).clamp(max=1.0)
    changed = (moved != x).flatten(1).any(1)
    assert verify(model, x, wrong, moved, eps=0.1, norm="linf").misclassified[changed].any()
