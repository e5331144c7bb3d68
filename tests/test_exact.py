"""Exact ground truth on the boards (results.exact): the exact value or its interval, every
attack's optimality gap, and contradictions flagged red; the published records have none."""

from __future__ import annotations

from pathlib import Path

import pytest
from leaderboard import build_site

import attacks
import results
from results import CellRecord, ModelRecord
from results.board import boards
from results.exact import contradictions, exact_summaries

MODEL = "oracle-mlp"
CLEAN = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]


def _cell(attack: str, robust: list[int], *, eps: float = 0.01, info: dict | None = None
          ) -> CellRecord:
    n = len(CLEAN)
    return CellRecord(
        key=f"{attack}|{eps}", suite="oracle-edge", dataset="mnist5k", model=MODEL,
        model_sha256="0" * 64, attack=attack, attack_config=attacks.create_attack(attack).config(),
        norm="linf", eps=eps, n=n, n_attacked=sum(CLEAN), clean_acc=sum(CLEAN) / n,
        robust_acc=sum(robust) / n, seconds=0.1, seconds_per_sample=0.01, device="cpu", seed=0,
        robust=robust, clean_correct=CLEAN, inputs_sha256="1" * 64, info=info or {},
        created="2026-01-02T03:04:05Z",
    ).validate()


#: points 0-3 proved robust, 4-6 broken, 7-8 undecided, 9 misclassified clean
VERDICTS = ["robust"] * 4 + ["broken"] * 3 + ["unknown"] * 2 + [""]
ORACLE_ROBUST = [1, 1, 1, 1, 0, 0, 0, 1, 1, 0]


def write(root: Path, *, contradiction: bool) -> None:
    put = lambda r: results.append(results.cells_path("oracle-edge", root), r)  # noqa: E731
    put(_cell("milp-linf", ORACLE_ROBUST, info={"verdicts": VERDICTS, "proved": 4}))
    # PGD breaks 2 of the 3 breakable points and one undecided point
    put(_cell("pgd-linf", [1, 1, 1, 1, 0, 0, 1, 0, 1, 0]))
    # FGSM breaks one breakable point, or (contradiction) also point 2, proved robust
    put(_cell("fgsm", [1, 1, 0 if contradiction else 1, 1, 0, 1, 1, 1, 1, 0]))
    # at another ε, a board without a verifier
    put(_cell("pgd-linf", [0] * 9 + [0], eps=0.1))
    results.append(results.models_path("oracle-edge", root), ModelRecord(
        suite="oracle-edge", dataset="mnist5k", model=MODEL, model_sha256="0" * 64,
        clean_acc=0.9, n=10, card={"dataset": "mnist5k", "arch": "mlp3x50", "quant": "bnn-waq"},
        created="2026-01-02T03:04:05Z"))


def test_interval_gaps_and_no_contradiction(tmp_path):
    write(tmp_path, contradiction=False)
    cells = results.load("oracle-edge", tmp_path)
    (ex,) = exact_summaries(cells).values()
    assert (ex.proved, ex.broken, ex.unknown, ex.clean_wrong) == (4, 3, 2, 1)
    assert ex.exact is None and ex.lower == 0.4
    assert ex.upper == pytest.approx(0.5)  # point 7 survives the oracle, PGD breaks it: 8 stays
    # decided points 0-6 and 9: PGD leaves 0-3 and 6 robust (5 of 8), the truth is 4 of 8
    assert ex.gaps["pgd-linf"] == pytest.approx(5 / 8 - 4 / 8)
    assert ex.gaps["fgsm"] == pytest.approx(6 / 8 - 4 / 8)
    assert ex.decided_of == {"pgd-linf": 8, "fgsm": 8}
    assert ex.contradictions == {} and contradictions(cells) == []
    (b_small, b_large) = boards(cells, results.load_models("oracle-edge", tmp_path))
    assert b_small.rows[0].exact == ex and b_large.rows[0].exact is None


def test_contradiction_is_detected_and_flagged_red(tmp_path):
    root, out = tmp_path / "records", tmp_path / "public"
    write(root, contradiction=True)
    cells = results.load("oracle-edge", root)
    found = contradictions(cells)
    assert [(c["attack"], c["point"], c["verifier"]) for c in found] == [("fgsm", 2, "milp-linf")]
    build_site(root, out)
    from leaderboard.data import board_file, model_file

    page = (out / board_file("oracle-edge", "linf", 0.01)).read_text(encoding="utf-8")
    assert 'data-badge="contradiction"' in page and "b-problem" in page
    # the interval [proved, best known] in the Exact column; FGSM's break of point 2 takes
    # best known down to the proved share
    assert ">40.0–40.0</td>" in page
    other = (out / board_file("oracle-edge", "linf", 0.1)).read_text(encoding="utf-8")
    assert "exact-col" not in other
    model_page = (out / model_file(MODEL)).read_text(encoding="utf-8")
    assert "Gap to the exact robust accuracy" in model_page


def test_exact_value_when_every_point_is_decided(tmp_path):
    put = lambda r: results.append(results.cells_path("oracle-edge", tmp_path), r)  # noqa: E731
    verdicts = ["robust"] * 6 + ["broken"] * 3 + [""]
    put(_cell("milp-linf", [1] * 6 + [0] * 4, info={"verdicts": verdicts}))
    put(_cell("pgd-linf", [1] * 7 + [0] * 3))
    (ex,) = exact_summaries(results.load("oracle-edge", tmp_path)).values()
    assert ex.exact == pytest.approx(0.6) and ex.gaps == {"pgd-linf": pytest.approx(0.1)}


def test_published_records_have_no_contradiction():
    """No attack in results/records broke a point that the verifier proved robust."""
    assert contradictions(results.load()) == []


def test_how_far_from_optimal_counts_each_attacks_misses(tmp_path):
    from results.optimality import TOGETHER, optimality

    root, out = tmp_path / "records", tmp_path / "public"
    write(root, contradiction=False)
    (row,) = optimality(results.load("oracle-edge", root))
    misses = {m.attack: m for m in row.misses}
    # breakable: points 4-6; PGD misses point 6, FGSM points 5 and 6, together point 6 only
    assert [(m.breakable, m.missed) for m in (misses["pgd-linf"], misses["fgsm"])] == [(3, 1),
                                                                                        (3, 2)]
    assert (misses[TOGETHER].missed, misses[TOGETHER].robust) == (1, 6)
    assert misses["fgsm"].missed_share == pytest.approx(2 / 3)
    build_site(root, out)
    for page in ("index.html", "paper.html"):
        html = (out / page).read_text(encoding="utf-8")
        assert "How far from optimal are the attacks?" in html
        assert "<strong>all attacks together</strong>" in html
        assert "[40.0, 50.0]" in html  # proved robust up to best-known: two undecided points
    assert list((out / "img").glob("optimal-*.png"))
    paper = (out / "paper.html").read_text(encoding="utf-8")
    assert 'data-claim="gradient-near-optimal"' in paper
