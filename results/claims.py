"""The paper's claims, checked against this zoo's records ("Paper vs this zoo").

Gupta & Ajanthan, "Improved Gradient based Adversarial Attacks for Quantized Networks"
(AAAI 2022) make five claims that the default suite can test on MNIST-sized models; a sixth row
asks what their reading of near-0 PGD++ accuracy implies (gradient attacks are near-optimal on
BNN-WAQ MLPs), against the exact verifier of the oracle suite; the last rows test the
conjecture of their conclusion on this zoo's multi-bit networks, one row per bit width. Each claim
is evaluated from the recorded cells of each model's current run (:func:`results.bestknown.
current_runs`), with the attacks chosen by their recorded traits (family, base, scaler), never
by name; every comparison is listed with its numbers.

Every comparison is paired: two cells on the test points both cover (a suite runs some attacks
on the first points only), compared point by point with the exact sign test on the points only
one of them broke (:mod:`results.paired`, α = 0.05). A comparison ``holds`` when the difference
goes the claimed way and is significant, ``fails`` when it is significant the other way, and is
a ``tie`` otherwise: one test point more or less never flips a verdict. "About 0" is judged
against best-known (the per-sample minimum over every attack on those points): PGD++ takes a
model to about 0 when it leaves no significantly more points standing than best-known does.
A claim ``holds`` when no comparison fails and every one holds (ties count as holding for the
"as strong as" claim), ``does not hold`` when every comparison fails, is ``inconclusive`` when
every comparison is a tie, and holds ``partly`` otherwise. Models are read from their cards:
BNNs are ``bnn-wq`` and ``bnn-waq``, float models ``ref``; adversarially trained models are
left out (the paper's claims are about normally trained networks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from results.bestknown import best_known, current_runs
from results.optimality import exact_robust
from results.paired import Paired, paired
from results.vocabulary import MULTIBIT, is_plain, is_tempered, traits_from_config

#: PGD "does not" take a model to about 0: it leaves more than this
PGD_LEAVES = 0.10
#: the outcomes of one comparison, in the claim's terms
OUTCOMES = ("holds", "tie", "fails")


@dataclass(frozen=True)
class Comparison:
    model: str
    eps: float
    norm: str
    text: str  # the numbers, e.g. "PGD 3.5% vs PGD++ 2.1% (12 vs 3 discordant points, p = 0.04)"
    outcome: str  # one of OUTCOMES


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str  # the paper's claim, in short
    where: str  # where the paper makes it
    test: str  # how the records test it
    comparisons: list[Comparison] = field(default_factory=list)
    #: ties count as holding ("as strong as" claims)
    ties_hold: bool = False

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.comparisons)

    @property
    def verdict(self) -> str:
        total, fails, ties = len(self.comparisons), self.count("fails"), self.count("tie")
        if not total:
            return "not tested"
        if fails == total:
            return "does not hold"
        if ties == total and not self.ties_hold:
            return "inconclusive"
        if fails == 0 and (self.ties_hold or ties == 0):
            return "holds"
        return "partly"

    @property
    def score(self) -> str:
        return (f"{self.count('holds')} hold, {self.count('tie')} tie, "
                f"{self.count('fails')} fail of {len(self.comparisons)}")


def outcome(test: Paired, claimed: str) -> str:
    """A paired test in a claim's terms: ``claimed`` is what the claim says of its first
    vector (``stronger``: it leaves fewer points standing; ``tie``: it is no weaker)."""
    if claimed == "tie":
        return "fails" if test.outcome == "weaker" else "holds"
    if test.outcome == "tie":
        return "tie"
    return "holds" if test.outcome == claimed else "fails"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


class _Cells:
    """The current ok cells with their traits, and model cards."""

    def __init__(self, cells: pd.DataFrame, models: pd.DataFrame) -> None:
        ok = current_runs(cells[cells["status"] == "ok"]) if len(cells) else cells
        self.best = _best_known_vectors(ok) if len(ok) else {}
        self.exact = exact_robust(ok) if len(ok) else {}
        self.rows = []
        for r in ok.itertuples():
            traits, _ = traits_from_config(r.attack_config)
            self.rows.append((r, traits))
        self.cards = {(m.suite, m.model): m.card if isinstance(m.card, dict) else {}
                      for m in models.itertuples()} if len(models) else {}

    def quant(self, suite: str, model: str) -> str | None:
        card = self.cards.get((suite, model), {})
        at = card.get("adversarial_training")
        if isinstance(at, dict) and at.get("enabled"):
            return None  # adversarially trained: not part of the claims
        return card.get("quant")

    def pick(self, want: Callable[[Any, dict], bool]) -> dict[tuple, Any]:
        """(suite, model, norm, ε) → cell of the attack ``want`` selects."""
        return {(r.suite, r.model, r.norm, float(r.eps)): r
                for r, t in self.rows if want(r, t)}


def _plain(base: str) -> Callable[[Any, dict], bool]:
    """The base attack itself (family gradient, no temperature, its own base)."""
    return lambda r, t: is_plain(r.attack, t, base)


def _tempered(base: str) -> Callable[[Any, dict], bool]:
    """Its PGD++ versions (NJS or HNS temperature)."""
    return lambda r, t: is_tempered(t, base)


def _vs(a: Any, b: Any) -> Paired:
    """Cell ``a`` against cell ``b`` on their common points."""
    return paired(a.robust, b.robust)


def _numbers(la: str, lb: str, t: Paired) -> str:
    """'PGD 3.5% vs PGD++ 2.1% (first 200 points; 12 vs 3 discordant points, p = 0.04)'."""
    return (f"{la} {_pct(t.a_acc)} vs {lb} {_pct(t.b_acc)} ({t.n} points; {t.counts()})")


def _best_known_vectors(cells: pd.DataFrame) -> dict[tuple, list[int]]:
    """(suite, model, norm, ε) → per-sample robust flags of best-known (1: no attack broke it)."""
    out = {}
    for r in best_known(cells).itertuples():
        group = cells[(cells["suite"] == r.suite) & (cells["model"] == r.model)
                      & (cells["norm"] == r.norm) & (cells["eps"] == r.eps) & (cells["n"] == r.n)]
        clean = np.array(group["clean_correct"].iloc[0], dtype=bool)
        standing = np.array([b == "" for b in r.broken_by], dtype=bool)
        out[(r.suite, r.model, r.norm, float(r.eps))] = (clean & standing).astype(int).tolist()
    return out


def _best_tempered(c: _Cells, base: str) -> dict[tuple, Any]:
    """Per threat model, the stronger of NJS and HNS (lower robust accuracy)."""
    out: dict[tuple, Any] = {}
    for r, t in c.rows:
        if _tempered(base)(r, t):
            key = (r.suite, r.model, r.norm, float(r.eps))
            if key not in out or r.robust_acc < out[key].robust_acc:
                out[key] = r
    return out


def paper_claims(cells: pd.DataFrame, models: pd.DataFrame, *, norm: str = "linf",
                 eps: float = 0.1) -> list[Claim]:
    """The claims, evaluated at (``norm``, ``eps``) where a claim needs one threat model
    (the FGSM and IPROP claims use every ε recorded for them)."""
    c = _Cells(cells, models)
    here = lambda k: k[2] == norm and abs(k[3] - eps) < 1e-9  # noqa: E731
    base = f"pgd-{norm}"
    pgd = {k: v for k, v in c.pick(_plain(base)).items() if here(k)}
    pp = {k: v for k, v in _best_tempered(c, base).items() if here(k)}
    label = f"{'L∞' if norm == 'linf' else 'L2'} ε = {eps:g}"
    claims = []

    # 1. BNNs look more robust than float nets under PGD (same architecture)
    comps = []
    by_arch: dict[tuple, dict[str, Any]] = {}
    for (suite, model, _, _), cell in pgd.items():
        q = c.quant(suite, model)
        arch = c.cards.get((suite, model), {}).get("arch")
        if q in ("ref", "bnn-wq", "bnn-waq") and arch:
            by_arch.setdefault((suite, arch), {})[q] = cell
    for (_, arch), group in sorted(by_arch.items()):
        ref = group.get("ref")
        for q in ("bnn-wq", "bnn-waq"):
            if ref is None or q not in group:
                continue
            t = _vs(ref, group[q])  # PGD "stronger" on the float net: the BNN looks robust
            comps.append(Comparison(group[q].model, eps, norm, "PGD leaves " + _numbers(
                f"{arch} ref", f"{arch} {q}", t), outcome(t, "stronger")))
    claims.append(Claim("bnn-look-robust", "BNNs look more robust than float networks under "
                        "PGD", "Sec. 1 and Table 1",
                        f"PGD robust accuracy at {label}, each BNN against the float network "
                        "of the same architecture on the same test points: does PGD leave "
                        "significantly more standing on the BNN?", comps))

    # 2. PGD++ takes BNNs to about 0 where PGD does not
    comps = []
    for key, cell in sorted(pgd.items()):
        if c.quant(key[0], key[1]) not in ("bnn-wq", "bnn-waq") or key not in pp \
                or key not in c.best:
            continue
        if cell.robust_acc <= PGD_LEAVES:
            continue  # PGD already breaks it: nothing for PGD++ to show
        t = paired(pp[key].robust, c.best[key])
        comps.append(Comparison(key[1], eps, norm, f"PGD {_pct(cell.robust_acc)}; " + _numbers(
            f"PGD++ ({pp[key].attack})", "best-known", t), outcome(t, "tie")))
    claims.append(Claim("pgdpp-to-zero", "PGD++ takes BNNs to about 0% where PGD does not",
                        "Sec. 6, Table 2",
                        f"at {label}, every normally trained BNN on which PGD leaves more than "
                        f"{_pct(PGD_LEAVES)}: does PGD++ (the better of NJS and HNS) leave no "
                        "significantly more points standing than best-known (every attack "
                        "together)?", comps))

    # 3. PGD++ beats APGD-DLR, Square, DeepFool and BBA on BNNs
    others = {
        "APGD-DLR": lambda r, t: t.get("base") == "apgd-dlr",
        "Square": lambda r, t: t.get("base") == "square",
        "DeepFool": lambda r, t: t.get("base") == f"deepfool-{norm}",
        "BBA": lambda r, t: t.get("base") == f"bba-{norm}",
    }
    comps = []
    for other, want in others.items():
        cells_o = {k: v for k, v in c.pick(want).items() if here(k)}
        for key, cell in sorted(pp.items()):
            if c.quant(key[0], key[1]) not in ("bnn-wq", "bnn-waq") or key not in cells_o:
                continue
            t = _vs(cell, cells_o[key])
            comps.append(Comparison(key[1], eps, norm, _numbers("PGD++", other, t),
                                    outcome(t, "stronger")))
    claims.append(Claim("pgdpp-beats-others", "PGD++ is as strong as or stronger than "
                        "APGD-DLR, Square, DeepFool and BBA on BNNs", "Sec. 6, Table 4",
                        f"at {label}, on every normally trained BNN: PGD++ (the better of NJS "
                        "and HNS) against each other attack, on the test points both ran on "
                        "(a tie is as strong)", comps, ties_hold=True))

    # 4. FGSM++ beats FGSM (every ε of the norm)
    comps = []
    fgsm = c.pick(_plain("fgsm"))
    fpp = _best_tempered(c, "fgsm")
    for key, cell in sorted(fgsm.items()):
        if key[2] != norm or c.quant(key[0], key[1]) not in ("bnn-wq", "bnn-waq") \
                or key not in fpp:
            continue
        t = _vs(fpp[key], cell)
        comps.append(Comparison(key[1], key[3], norm, f"ε = {key[3]:g}: " + _numbers(
            f"FGSM++ ({fpp[key].attack})", "FGSM", t), outcome(t, "stronger")))
    claims.append(Claim("fgsmpp-beats-fgsm", "FGSM++ beats FGSM on BNNs", "Sec. 6, Table 2",
                        f"every recorded {'L∞' if norm == 'linf' else 'L2'} ε, every normally "
                        "trained BNN: FGSM++ (the better of NJS and HNS) leaves significantly "
                        "less than FGSM", comps))

    # 5. PGD++ flips more points than IPROP at every ε (BNN-WAQ MLPs)
    comps = []
    iprop = c.pick(lambda r, t: t.get("base") == "iprop")
    ppl = _best_tempered(c, "pgd-linf")
    for key, cell in sorted(iprop.items()):
        if key not in ppl:
            continue
        t = _vs(ppl[key], cell)
        comps.append(Comparison(key[1], key[3], "linf", f"ε = {key[3]:g}: " + _numbers(
            f"PGD++ ({ppl[key].attack})", "IPROP", t), outcome(t, "stronger")))
    claims.append(Claim("pgdpp-beats-iprop", "PGD++ flips more points than IPROP at every ε",
                        "appendix, Fig. 2",
                        "every L∞ ε recorded for IPROP (BNN-WAQ MLPs): PGD++ leaves "
                        "significantly less robust accuracy than IPROP", comps))
    # 6. (this zoo's) gradient attacks are near-optimal on BNN-WAQ MLPs: PGD++ against the truth
    comps = []
    for key, (flags, idx) in sorted(c.exact.items()):
        if key not in ppl:
            continue
        vec = ppl[key].robust
        idx = [i for i in idx if i < len(vec)]
        t = paired([vec[i] for i in idx], flags[:len(idx)])
        comps.append(Comparison(key[1], key[3], key[2], f"ε = {key[3]:g}: " + _numbers(
            f"PGD++ ({ppl[key].attack})", "exact", t).replace(" points;", " decided points;"),
            outcome(t, "tie")))
    claims.append(Claim("gradient-near-optimal", "Gradient attacks (PGD++ included) are "
                        "near-optimal on BNN-WAQ MLPs",
                        "implicit in Sec. 6, which reads PGD++'s near-0 accuracy as the end of "
                        "fake robustness; not a claim of the paper's text",
                        "every ε with an exact verifier cell (suite mnist5k-oracle): does PGD++ "
                        "(the better of NJS and HNS) leave no significantly more points "
                        "standing than the exact robust accuracy, on the points the verifier "
                        "decided?", comps))

    # 7. the paper's conjecture: PGD++ also removes the fake robustness of multi-bit networks,
    # one row per bit width
    for quant, (weight, act) in MULTIBIT.items():
        comps = []
        for key, cell in sorted(pgd.items()):
            if c.quant(key[0], key[1]) != quant or key not in pp or key not in c.best:
                continue
            t = paired(pp[key].robust, c.best[key])
            fake = paired(cell.robust, c.best[key])
            had = ("PGD leaves significantly more than best-known (fake robustness)"
                   if fake.outcome == "weaker" else "PGD is already at best-known")
            comps.append(Comparison(key[1], eps, norm, f"PGD {_pct(cell.robust_acc)}: {had}; "
                                    + _numbers(f"PGD++ ({pp[key].attack})", "best-known", t),
                                    outcome(t, "tie")))
        bits = f"W{weight}A{act}" if act else f"W{weight} with float activations"
        claims.append(Claim(
            f"pgdpp-multibit-{quant}", f"PGD++ also removes the fake robustness of multi-bit "
            f"quantized networks: {bits}",
            "conclusion (a conjecture: the paper studies BNNs only)",
            f"at {label}, every normally trained {bits} network: does PGD++ (the better of NJS "
            "and HNS) leave no significantly more points standing than best-known (every "
            "attack together)? Each comparison also says whether PGD itself fell short of "
            "best-known, i.e. whether there was fake robustness to remove", comps))
    return claims
