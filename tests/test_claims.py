"""Paired comparisons and the paper's claims: one test point more or less never flips a
verdict, and "about 0" is judged against best-known, not a fixed threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import make_cell

import attacks
import results
from results.claims import OUTCOMES, Claim, Comparison, paper_claims
from results.paired import ALPHA, paired, sign_test_p
from results.schema import ModelRecord

N = 1000


def test_sign_test_p_values():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(0, 5) == pytest.approx(2 / 32)  # not significant at 0.05
    assert sign_test_p(0, 6) == pytest.approx(2 / 64)  # significant
    assert sign_test_p(3, 6) == 1.0
    assert sign_test_p(6, 6) == sign_test_p(0, 6)
    assert sign_test_p(40, 100) == pytest.approx(0.0569, abs=1e-4)


def _vector(standing: set[int], n: int = N) -> list[int]:
    return [int(i in standing) for i in range(n)]


def test_paired_counts_only_discordant_points():
    # the example: 1.6% vs 1.5% on 1,000 points is a tie, not a loss
    a = _vector(set(range(16)))
    b = _vector(set(range(5)) | set(range(16, 26)))
    t = paired(a, b)
    assert (t.n, t.a_robust, t.b_robust, t.only_a_broke, t.only_b_broke) == (N, 16, 15, 10, 11)
    assert t.outcome == "tie" and t.p > ALPHA
    strong = paired(_vector(set()), _vector(set(range(10))))  # a broke 10 points b did not
    assert strong.outcome == "stronger" and strong.p < ALPHA
    assert paired(_vector(set(range(10))), _vector(set())).outcome == "weaker"
    assert paired([1, 0, 1], [1, 1, 1, 0, 0]).n == 3  # the common prefix only


def _cell(model: str, attack: str, standing: set[int], *, eps: float = 0.1, n: int = N):
    robust = _vector(standing, n)
    return make_cell(key=f"{model}-{attack}-{eps}", suite="s", model=model, attack=attack,
                     attack_config=attacks.create_attack(attack).config(), eps=eps, n=n,
                     n_attacked=n, clean_acc=1.0, robust_acc=sum(robust) / n, robust=robust,
                     clean_correct=[1] * n, model_sha256=f"sha-{model}",
                     seconds_per_sample=0.001)


def _claims(tmp_path: Path, cells: list, quants: dict[str, str]) -> dict[str, Claim]:
    for c in cells:
        results.append(results.cells_path("s", tmp_path), c)
    for model, quant in quants.items():
        results.append(results.models_path("s", tmp_path), ModelRecord(
            suite="s", dataset="digits", model=model, model_sha256=f"sha-{model}",
            clean_acc=1.0, n=N, card={"arch": "mlp", "quant": quant}, diagnostics={}))
    found = paper_claims(results.load(root=tmp_path), results.load_models(root=tmp_path))
    return {c.key: c for c in found}


def test_claim_verdicts_respect_sampling_noise(tmp_path):
    pgd_waq = set(range(850))
    cells = [
        _cell("ref", "pgd-linf", set(range(10))),
        _cell("waq", "pgd-linf", pgd_waq),
        # PGD++ leaves 1.6%, APGD-DLR 1.5%: 10 vs 11 discordant points, a tie
        _cell("waq", "pgd-linf-njs", set(range(16))),
        _cell("waq", "apgd-dlr", set(range(5)) | set(range(16, 26))),
        # ... and Square leaves 30 more: PGD++ is significantly stronger
        _cell("waq", "square", set(range(46))),
        # the pixel-coordinate NJS is not PGD++ (it never stands in for it)
        _cell("waq", "pgd-linf-njs-raw", set()),
    ]
    claims = _claims(tmp_path, cells, {"ref": "ref", "waq": "bnn-waq"})

    looks = claims["bnn-look-robust"]
    assert [c.outcome for c in looks.comparisons] == ["holds"] and looks.verdict == "holds"

    others = claims["pgdpp-beats-others"]
    by_other = {c.text.split(" ")[3]: c.outcome for c in others.comparisons}
    assert by_other == {"APGD-DLR": "tie", "Square": "holds"}
    assert others.verdict == "holds"  # a tie is "as strong as"
    assert "10 vs 11 discordant points" in others.comparisons[0].text

    # best-known (every attack, the pixel-coordinate NJS included) leaves no point standing:
    # PGD++'s 16 points are significantly above it
    zero = claims["pgdpp-to-zero"]
    assert [c.outcome for c in zero.comparisons] == ["fails"]
    assert zero.verdict == "does not hold"
    assert "PGD++ (pgd-linf-njs) 1.6% vs best-known" in zero.comparisons[0].text


def test_about_zero_is_within_the_sampling_error_of_best_known(tmp_path):
    cells = [
        _cell("waq", "pgd-linf", set(range(850))),
        _cell("waq", "pgd-linf-njs", set(range(9))),  # 4 points more than best-known: a tie
        _cell("waq", "apgd-dlr", set(range(5))),
    ]
    zero = _claims(tmp_path, cells, {"waq": "bnn-waq"})["pgdpp-to-zero"]
    assert [c.outcome for c in zero.comparisons] == ["holds"] and zero.verdict == "holds"


@pytest.mark.parametrize("outcomes,ties_hold,verdict", [
    ([], False, "not tested"),
    (["holds", "holds"], False, "holds"),
    (["holds", "tie"], False, "partly"),
    (["holds", "tie"], True, "holds"),
    (["tie", "tie"], False, "inconclusive"),
    (["tie", "tie"], True, "holds"),
    (["fails", "fails"], True, "does not hold"),
    (["holds", "fails"], False, "partly"),
])
def test_claim_verdict_rule(outcomes, ties_hold, verdict):
    assert set(outcomes) <= set(OUTCOMES)
    claim = Claim("k", "c", "w", "t", [Comparison("m", 0.1, "linf", "", o) for o in outcomes],
                  ties_hold=ties_hold)
    assert claim.verdict == verdict


def test_gradient_attacks_are_judged_against_the_exact_verifier(tmp_path):
    # the verifier proves 900 points robust, breaks 90 and leaves 10 undecided
    verdicts = ["robust"] * 900 + ["broken"] * 90 + ["unknown"] * 10
    milp = _cell("waq", "milp-linf", set(range(900)) | set(range(990, 1000)), eps=0.01)
    milp = make_cell(**{**results.schema.to_dict(milp), "info": {"verdicts": verdicts}})
    near = _cell("waq", "pgd-linf-njs", set(range(904)), eps=0.01)  # misses 4 breakable points
    far = _cell("waq", "pgd-linf-njs", set(range(960)), eps=0.02)  # misses 60 of them
    milp2 = make_cell(**{**results.schema.to_dict(milp), "key": "m2", "eps": 0.02})
    claim = _claims(tmp_path, [milp, near, milp2, far], {"waq": "bnn-waq"})[
        "gradient-near-optimal"]
    assert [c.outcome for c in claim.comparisons] == ["holds", "fails"]
    assert claim.verdict == "partly"
    assert "990 decided points; 0 vs 4 discordant points" in claim.comparisons[0].text


def test_the_multi_bit_conjecture_gets_a_verdict_per_bit_width(tmp_path):
    cells = [
        # W4A4: PGD leaves 30% more than best-known (fake robustness), PGD++ removes it
        _cell("w4", "pgd-linf", set(range(300))),
        _cell("w4", "pgd-linf-njs", set(range(2))),
        _cell("w4", "apgd-dlr", set(range(1))),
        # W8A8: PGD is already at best-known, and so is PGD++
        _cell("w8", "pgd-linf", set(range(3))),
        _cell("w8", "pgd-linf-hns", set(range(3))),
        # W2A2: PGD++ falls short of best-known (Square breaks 40 more): the conjecture fails
        _cell("w2", "pgd-linf", set(range(60))),
        _cell("w2", "pgd-linf-njs", set(range(50))),
        _cell("w2", "square", set(range(10))),
    ]
    found = _claims(tmp_path, cells, {"w4": "w4a4", "w8": "w8a8", "w2": "w2a2"})
    w4, w8, w2 = (found[f"pgdpp-multibit-{q}"] for q in ("w4a4", "w8a8", "w2a2"))
    assert (w4.verdict, w8.verdict, w2.verdict) == ("holds", "holds", "does not hold")
    assert "fake robustness" in w4.comparisons[0].text
    assert "already at best-known" in w8.comparisons[0].text
    assert found["pgdpp-multibit-w2a32"].verdict == "not tested"
    # the BNN claims do not count multi-bit networks
    assert not any(c.model in ("w2", "w4", "w8") for c in found["pgdpp-to-zero"].comparisons)


def test_bits_rows_put_every_quantization_on_its_bit_width(tmp_path):
    from results.bits import bits_rows

    quants = {"f": "ref", "b1": "bnn-waq", "q4": "w4a4", "q2": "w2a32"}
    cells = [_cell(m, a, set(range(k))) for m, k in (("f", 10), ("b1", 800), ("q4", 40),
                                                       ("q2", 30))
             for a in ("pgd-linf", "pgd-linf-njs")]
    cells.append(make_cell(**{**_cell("q4", "pgd-linf-hns", set(range(20))).__dict__,
                              "info": {"deployed_checked": 980, "deployed_held": 975}}))
    _claims(tmp_path, cells, quants)
    rows = bits_rows(results.load(root=tmp_path), results.load_models(root=tmp_path),
                     norm="linf", eps=0.1)
    assert [(r.model, r.weight_bits, r.act_bits, r.label) for r in rows] == [
        ("b1", 1, 1, "W1A1"), ("q2", 2, 32, "W2 (float act.)"), ("q4", 4, 4, "W4A4"),
        ("f", 32, 32, "float")]
    q4 = rows[2]
    assert q4.robust["PGD"] == 0.04 and q4.robust["PGD++ HNS"] == 0.02
    assert q4.robust["Square"] is None and q4.best_known == 0.02
    assert (q4.deployed_held, q4.deployed_checked) == (975, 980)
    from results.bits import integer_rejections

    (rejected,) = integer_rejections(results.load(root=tmp_path))
    assert (rejected.model, rejected.attack, rejected.held, rejected.checked) == (
        "q4", "pgd-linf-hns", 975, 980)


def test_the_paper_page_plots_and_tables_robust_accuracy_against_bit_width(tmp_path):
    from leaderboard import build_site

    quants = {"f": "ref", "b1": "bnn-waq", "q4": "w4a4", "q8": "w8a8"}
    cells = [_cell(m, a, set(range(k))) for m, k in (("f", 10), ("b1", 800), ("q4", 40),
                                                       ("q8", 20))
             for a in ("pgd-linf", "pgd-linf-njs")]
    cells.append(_cell("q4", "square", set(range(20))))  # 2 points less than PGD++ on q4
    cells.append(_cell("b1", "square", set(range(600))))  # 20 points less on b1
    _claims(tmp_path, cells, quants)
    index = build_site(tmp_path, tmp_path / "site")
    paper = (index.parent / "paper.html").read_text()
    section = paper[paper.index('id="bits"'):]
    assert 'data-arch="mlp"' in section
    rows = [section.index(f">{m}<") for m in ("b1", "q4", "q8", "f")]
    assert rows == sorted(rows)  # by bit width: 1, 4, 8, float
    assert (index.parent / "img" / "bits-s-mlp-linf.png").stat().st_size > 1000
    assert 'data-claim="pgdpp-multibit-w4a4"' in paper
    # the network where PGD++ falls 10 points or more short of best-known is named
    assert 'class="small surprise" data-model="b1"' in section
    assert 'data-model="q4"' not in section.split("<table")[0]
