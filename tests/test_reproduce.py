"""``bench reproduce``: committed cells recomputed from the shipped weights, field by field."""

from __future__ import annotations

import dataclasses
import json
import shutil

from factories import make_cell

from bench import reproduce as rep
from bench.cli import main
from results.store import RECORDS_DIR, cells_path, models_path

CHEAP = "fgsm*,pgd-l2*"  # cells of a few seconds each


def test_a_sample_of_the_published_cells_reproduces(capsys):
    assert main(["reproduce", "--sample", "3", "--attacks", CHEAP, "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == rep.HEADER and len(out) == 5, out
    assert all(line.endswith("  same") for line in out[1:4]), out
    assert out[4].startswith("3/3 cells of suite mnist5k reproduced exactly")


def _copy_with_one_bit_flipped(tmp_path) -> str:
    """A records folder like the project's, one cell's robust bit flipped (still a valid
    record); that cell's key. The last fgsm cell recorded is taken: earlier lines may hold
    cells of an older attack version, which no longer reproduce as they are."""
    shutil.copy(models_path("mnist5k"), models_path("mnist5k", tmp_path))
    lines = cells_path("mnist5k").read_text(encoding="utf-8").splitlines()
    for i in reversed(range(len(lines))):
        cell = json.loads(lines[i])
        if cell["status"] == "ok" and cell["attack"] == "fgsm" and 0 in cell["robust"]:
            j = next(k for k, (r, c) in enumerate(zip(cell["robust"], cell["clean_correct"],
                                                      strict=True)) if c and not r)
            cell["robust"][j] = 1
            cell["robust_acc"] = sum(cell["robust"]) / cell["n"]
            lines[i] = json.dumps(cell)
            cells_path("mnist5k", tmp_path).write_text("\n".join(lines) + "\n")
            return cell["key"]
    raise AssertionError("no fgsm cell with a broken point")


def test_a_changed_record_is_caught(tmp_path):
    key = _copy_with_one_bit_flipped(tmp_path)
    cell = next(c for c in rep.latest_cells("mnist5k", tmp_path).values() if c.key == key)
    outcomes = rep.reproduce("mnist5k", sample=1, models=cell.model, attacks="fgsm",
                             root=tmp_path, seed=0)
    if outcomes[0].record.key != key:  # the sample drew another ε of that model: compare it
        outcomes = [rep.compare(cell, rep.recompute(cell, "cpu"))]
    assert outcomes[0].differs == ["robust", "robust_acc"]
    assert "DIFFERS: robust, robust_acc" in rep.row(outcomes[0])
    assert tmp_path != RECORDS_DIR


def test_the_sample_covers_every_model_and_family_before_repeating_one():
    cells = [make_cell(key=f"{m}{a}{e}", model=m, attack=a, eps=e,
                       attack_config={"traits": {"family": f}})
             for m in ("m1", "m2") for a, f in (("fgsm", "gradient"), ("square", "gradient-free"))
             for e in (0.1, 0.2, 0.3)]
    drawn = rep.sample_cells(cells, 4, seed=3)
    assert sorted((c.model, c.attack) for c in drawn) == [
        ("m1", "fgsm"), ("m1", "square"), ("m2", "fgsm"), ("m2", "square")]
    assert [c.key for c in rep.sample_cells(cells, 4, seed=3)] == [c.key for c in drawn]
    assert len(rep.sample_cells(cells, 100, seed=0)) == len(cells)


def _verdict_cell(verdicts: list[str], **over):
    robust = [int(v == "robust") for v in verdicts]
    return make_cell(n=len(verdicts), n_attacked=len(verdicts), clean_correct=[1] * len(verdicts),
                     robust=robust, robust_acc=sum(robust) / len(verdicts), clean_acc=1.0,
                     attack="milp-linf", attack_config={"traits": {"family": "exact"}},
                     info={"verdicts": verdicts, "unknown": verdicts.count("unknown"),
                           "solve_seconds_max": 1.0}, **over)


def test_the_time_limited_verifier_agrees_on_the_points_both_runs_decided():
    old = _verdict_cell(["robust", "broken", "unknown", "robust"])
    slower = _verdict_cell(["robust", "unknown", "unknown", "robust"])
    outcome = rep.compare(old, slower)
    assert outcome.agrees and outcome.undecided == 1
    assert "1 points undecided in one run" in rep.row(outcome)
    contradicting = _verdict_cell(["broken", "broken", "unknown", "robust"])
    assert rep.compare(old, contradicting).differs == ["verdicts"]


def test_timings_and_provenance_are_not_compared_and_info_floats_have_a_tolerance():
    old = make_cell(info={"beta1": 0.5011181749195737, "seconds_total": 3.0, "steps": 20})
    new = dataclasses.replace(old, seconds=9.0, seconds_per_sample=3.0, hardware="other",
                              info={"beta1": 0.5011181740053842, "seconds_total": 7.0,
                                    "steps": 20})
    assert rep.compare(old, new).agrees
    moved = dataclasses.replace(new, info={**new.info, "beta1": 0.5012})  # 2e-4 away
    assert rep.compare(old, moved).differs == ["info"]
    assert rep.compare(old, dataclasses.replace(new, forwards_per_sample=2.0)).differs == [
        "forwards_per_sample"]


def test_passes_may_move_by_a_few_early_stopped_steps_between_cpus():
    """Measured on a PGD-L2 cell of 947 attacked points, AVX-512 against AVX2 kernels: the same
    per-sample results, two more passes in all; a tenth fewer passes is another attack."""
    old = make_cell(forwards_per_sample=6.12882787750792, backwards_per_sample=6.12882787750792)
    moved = dataclasses.replace(old, forwards_per_sample=6.130939809926082,
                                backwards_per_sample=6.130939809926082)
    assert rep.compare(old, moved).agrees
    fewer = dataclasses.replace(old, forwards_per_sample=5.5, backwards_per_sample=5.5)
    assert rep.compare(old, fewer).differs == ["forwards_per_sample", "backwards_per_sample"]


def test_record_threads_reads_the_hardware_string():
    assert rep.record_threads(make_cell(hardware="x86_64 (2 cores, 1 torch threads, AVX2)")) == 1
    assert rep.record_threads(make_cell(hardware="x86_64 (8 cores, 8 torch threads)")) == 8
    assert rep.record_threads(make_cell(hardware="")) == 1


def test_only_the_published_cells_are_sampled(tmp_path):
    """Records are append-only: a cell superseded by a later one of the same measurement (its
    attack redefined) or of older weights stays in the file, and is not what the site shows."""
    from results.store import append

    old = make_cell(key="old", attack_config={"version": 1}, created="2026-01-01T00:00:00Z")
    new = make_cell(key="new", attack_config={"version": 2}, created="2026-01-02T00:00:00Z")
    stale = make_cell(key="stale", model="m2", model_sha256="w1", created="2026-01-01T00:00:00Z")
    fresh = make_cell(key="fresh", model="m2", model_sha256="w2", attack="fgsm",
                      created="2026-01-03T00:00:00Z")
    for c in (old, new, stale, fresh):
        append(cells_path("s", tmp_path), c)
    assert sorted(c.key for c in rep.published_cells("s", tmp_path)) == ["fresh", "new"]
