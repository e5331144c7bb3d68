"""Failures stay contained: a failing model stage, a failing cell, out-of-memory, NaN info."""

from __future__ import annotations

import pytest
import torch
from factories import evaluate_attacks
from torch import nn

import bench
import results
from attacks.base import Attack, AttackResult
from bench import engine
from bench.executors import local
from results.vocabulary import Traits

GRID = dict(suite="t", dataset="digits", models="digits-mlp5x100-ref,digits-mlp5x100-bnn-waq",
            attacks="fgsm,pgd-linf", eps={"linf": [0.1, 0.3]}, n=40, seed=1)


def test_a_model_that_fails_to_train_gets_error_cells_and_the_grid_goes_on(
        tmp_path, monkeypatch, digits_models):
    grid = bench.build_grid(**GRID)
    real = local.get_model

    def broken(name, **kw):
        if name.endswith("-ref"):
            raise RuntimeError("disk full while training")
        return real(name, **kw)

    monkeypatch.setattr(local, "get_model", broken)
    first = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert not first.ok and first.errors == 4 and first.ran == 8
    assert first.failures == ["digits-mlp5x100-ref: training failed: RuntimeError: disk full "
                              "while training"]
    df = results.load("t", root=tmp_path)
    bad = df[df["model"] == "digits-mlp5x100-ref"]
    assert (bad["status"] == "error").all() and bad["error"].str.contains("disk full").all()
    assert (df[df["model"] != "digits-mlp5x100-ref"]["status"] == "ok").all()

    monkeypatch.setattr(local, "get_model", real)  # the failure was a one-off
    second = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert second.ok and second.ran == 4 and second.skipped == 4  # only the errors are retried
    df = results.load("t", root=tmp_path)
    assert len(df) == 8 and (df["status"] == "ok").all()


def test_an_error_cell_is_retried_and_never_replaces_an_ok_cell(tmp_path, monkeypatch,
                                                               digits_models):
    grid = bench.build_grid(**{**GRID, "models": "digits-mlp5x100-bnn-waq"})
    real = engine._attack_batches
    calls = {"n": 0}

    def once(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a one-off failure")
        return real(*args, **kw)

    monkeypatch.setattr(engine, "_attack_batches", once)
    first = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert first.errors == 1 and first.ran == 4
    second = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False)
    assert second.ok and second.ran == 1 and second.skipped == 3
    good = results.load("t", root=tmp_path)

    def always(*args, **kw):
        raise RuntimeError("broken now")

    monkeypatch.setattr(engine, "_attack_batches", always)
    forced = bench.run_grid(grid, device="cpu", results_root=tmp_path, progress=False,
                            force=True)
    assert forced.errors == 4 and forced.ran == 0  # failed, and nothing was written over ok
    assert all("earlier ok record stands" in f for f in forced.failures)
    after = results.load("t", root=tmp_path)
    assert (after["status"] == "ok").all()
    assert after.set_index("key")["robust"].to_dict() == good.set_index("key")["robust"].to_dict()


class OutOfMemoryAbove(nn.Module):
    """A real model that, like a GPU, cannot take batches above ``limit`` inputs."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"cannot allocate for a batch of {len(x)}")
        return self.inner(x)


def test_out_of_memory_retries_once_with_half_the_batch(digits, digits_models):
    inner = digits_models["bnn-waq"]
    x, y = digits.test_subset(60)
    with torch.no_grad():
        clean = inner(x).argmax(1) == y
    k = int(clean.sum())
    kw = dict(attack_name="pgd-linf", eps=0.2, seed=5, device="cpu")
    out = engine.attack_cell(OutOfMemoryAbove(inner, k - 1).eval(), x, y, clean, **kw)
    assert out["status"] == "ok" and out["info"]["oom_batch_size"] == k // 2
    halved = engine.attack_cell(inner, x, y, clean, batch_size=k // 2, **kw)
    assert out["robust"] == halved["robust"]
    too_big = engine.attack_cell(OutOfMemoryAbove(inner, k // 4).eval(), x, y, clean, **kw)
    assert too_big["status"] == "error" and "OutOfMemoryError" in too_big["error"]


class UndefinedStatistic(Attack):
    """A plugin attack whose info holds numbers JSON cannot hold (a β over no points)."""

    norm = "linf"
    uses_gradients = False

    def run(self, model, x, y, *, eps, generator):
        return AttackResult(x.clone(), {"beta_mean": float("nan"), "beta_max": float("inf"),
                                        "nested": {"ratio": float("-inf")}})


def test_non_finite_info_is_stored_as_null(tmp_path, plugin_attack, digits, digits_models):
    plugin_attack("undefined-stat", UndefinedStatistic, description="test plugin",
                  traits=Traits("gradient-free", "undefined-stat", uses_gradients=False))
    rows = list(evaluate_attacks(
        digits_models["ref"], model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
        attacks=["undefined-stat"], eps={"linf": [0.1]}, n=30, seed=0, device="cpu"))
    (row,) = rows
    assert row.status == "ok", row.error
    assert row.info["beta_mean"] is None and row.info["beta_max"] is None
    assert row.info["nested"] == {"ratio": None}
    path = results.cells_path("t", tmp_path)
    results.append(path, row)
    assert results.latest_cells("t", tmp_path)[row.key].info == row.info


def test_a_model_with_logits_of_the_wrong_shape_fails_its_clean_pass(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    try:
        next(evaluate_attacks(
            model, model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
            attacks=["fgsm"], eps={"linf": [0.1]}, n=10, seed=0, device="cpu"))
    except engine.StageError as exc:
        assert "clean pass failed" in str(exc) and "(2, 10)" in str(exc)
    else:
        raise AssertionError("no StageError")


class PerPointVerdicts(Attack):
    """A plugin verifier reporting one verdict per input, or (``short``) one too few."""

    norm = "linf"
    uses_gradients = False

    def __init__(self, *, short: bool = False) -> None:
        self.short = short

    def run(self, model, x, y, *, eps, generator):
        verdicts = ["robust"] * (len(x) - int(self.short))
        return AttackResult(x.clone(), per_point={"verdicts": verdicts})


@pytest.mark.parametrize("short", [False, True])
def test_per_point_lists_span_the_test_set_or_fail_their_cell(plugin_attack, digits,
                                                               digits_models, short):
    plugin_attack("per-point", PerPointVerdicts, description="test plugin",
                  traits=Traits("gradient-free", "per-point", uses_gradients=False),
                  short=short)
    rows = list(evaluate_attacks(
        digits_models["ref"], model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
        attacks=["per-point", "fgsm"], eps={"linf": [0.1]}, n=30, seed=0, device="cpu"))
    row, other = rows
    assert other.status == "ok"  # the grid goes on
    if short:
        assert row.status == "error" and "per-point list 'verdicts'" in row.error
        return
    assert row.status == "ok", row.error
    clean = row.clean_correct
    assert len(row.info["verdicts"]) == 30
    assert [v == "" for v in row.info["verdicts"]] == [not c for c in clean]


class SetupProbe(Attack):
    """A plugin attack that records what its one-off setup got and spends passes there."""

    norm = "linf"
    uses_gradients = False
    seen: list = []

    def setup(self, model, context):
        with torch.no_grad():
            model(context.reference_x)  # work the engine must not count
        SetupProbe.seen.append(context)

    def run(self, model, x, y, *, eps, generator):
        with torch.no_grad():
            model(x)
        return AttackResult(x.clone())


def test_setup_gets_the_dataset_context_once_per_cell_and_is_not_counted(plugin_attack, digits,
                                                                        digits_models):
    plugin_attack("setup-probe", SetupProbe, description="test plugin",
                  traits=Traits("gradient-free", "setup-probe", uses_gradients=False))
    SetupProbe.seen = []
    rows = list(evaluate_attacks(
        digits_models["ref"], model_name="m", model_sha256="0" * 64, suite="t", dataset=digits,
        attacks=["setup-probe"], eps={"linf": [0.1, 0.2]}, n=30, seed=0, device="cpu"))
    assert [r.status for r in rows] == ["ok", "ok"]
    assert len(SetupProbe.seen) == 2  # once per cell, before its first batch
    first, second = SetupProbe.seen
    assert first is second  # one context per model: its memo serves every cell
    assert torch.equal(first.reference_x, digits.test_x[:101])  # NJS's reference images
    assert first.train_x is digits.train_x and first.std is not None
    # the run's one forward pass per attacked point is counted, setup's 101 are not
    assert all(r.forwards_per_sample == 1.0 for r in rows)
