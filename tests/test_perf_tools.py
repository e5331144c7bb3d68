"""The timing tools of ``benchmarks/`` run (their timings are checked by ``nox -s perf``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"qbench_benchmarks_{name}",
                                                  BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_timing_smoke_runs_on_cpu(tmp_path, capsys):
    gpu = _module("gpu_timing")
    out = tmp_path / "gpu.json"
    report = gpu.main(["--device", "cpu", "--smoke", "--variants", "fp32", "amp-bf16",
                       "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert [(r["variant"], r["batch"]) for r in report["results"]] == [("fp32", 2),
                                                                        ("amp-bf16", 2)]
    for row in report["results"]:
        for name in ("floor", "pgd-linf", "pgd-linf-njs", "pgd-linf-hns", "pgd-linf-all-steps"):
            assert isinstance(row["seconds"][name], float) and row["seconds"][name] > 0
    table = capsys.readouterr().out
    assert "| ref | fp32 | 2 |" in table and "PGD/floor" in table
    assert all(row["points_with_other_candidates"] == dict.fromkeys(gpu.ATTACKS, 0)
               for row in report["results"])


def test_gpu_timing_refuses_cuda_without_a_gpu(capsys):
    gpu = _module("gpu_timing")
    if gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as err:
        gpu.main(["--device", "cuda"])
    assert err.value.code == 2 and "--device cpu" in capsys.readouterr().err


def test_suite_time_counts_a_shared_search_once():
    st = _module("suite_time")
    b = st.breakdown("mnist5k")
    rows = b["models"]
    assert len(rows) == 13 and all(r["wall"] > 0 and r["train"] > 0 for r in rows)
    cells = [json.loads(line) for line in (st.RECORDS / "mnist5k.cells.jsonl").open()]
    run = [c for c in cells if c["versions"]["qbench_commit"] == b["commit"]]
    raw = sum(c["seconds"] for c in run)
    shared = {(c["model"], c["attack"]) for c in run if c["info"].get("search_shared_across_eps")}
    assert shared, "the records hold DeepFool cells that share one search across ε"
    attacks = sum(r["attacks"] for r in rows)
    assert attacks == pytest.approx(sum(b["families"].values()))
    assert attacks < raw  # the shared searches are counted once, not once per ε
    assert sum(r["wall"] for r in rows) == pytest.approx(
        sum(r["train"] + r["attacks"] + r["rest"] for r in rows))



def test_an_attack_that_calls_a_solver_is_not_a_librarys_attack():
    st = _module("suite_time")
    flip = {"attack": "flip-search-linf", "attack_config": {"library_versions": {"highspy": "1"}}}
    bba = {"attack": "bba-linf", "attack_config": {"library_versions": {"foolbox": "3.3.4"}}}
    old = {"attack": "square", "attack_config": {}}  # recorded before the field: the registry
    assert not st.wraps_a_library(flip) and st.wraps_a_library(bba) and st.wraps_a_library(old)
    assert st.family("flip-search-linf") == "flip search (ours)"


def test_suite_time_splits_off_the_libraries_attacks():
    st = _module("suite_time")
    b = st.breakdown("mnist5k")
    fams = b["families"]
    libs = [f for f in fams if "Foolbox" in f or "AutoAttack" in f]
    assert {"DeepFool (Foolbox)", "Brendel-Bethge (Foolbox)", "APGD (AutoAttack)"} <= set(libs)
    # every library family's seconds, and none of ours, are the libraries' share
    assert b["library_seconds"] == pytest.approx(sum(fams[f] for f in libs))
    assert 0 < b["library_seconds"] < sum(fams.values())
    assert b["cores"] is not None and b["cores"] >= 1
