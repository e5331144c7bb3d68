"""The paper's claims, checked against this zoo's records ("Paper vs this zoo").

Gupta & Ajanthan, "Improved Gradient based Adversarial Attacks for Quantized Networks"
(AAAI 2022) make five claims that the default suite can test on MNIST-sized models. Each claim
is evaluated from the recorded cells of each model's current run (:func:`results.bestknown.
current_runs`), with the attacks chosen by their recorded traits (family, base, scaler), never
by name, and the verdict is ``holds``, ``partly`` (some of the comparisons behind it hold) or
``does not hold``; every comparison is listed with its numbers.

Two cells are compared on the test points both cover (a suite runs some attacks on the first
points only): robust accuracy over the first ``min(n)`` points of each. Models are read from
their cards: BNNs are ``bnn-wq`` and ``bnn-waq``, float models ``ref``; adversarially trained
models are left out (the paper's claims are about normally trained networks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from results.bestknown import current_runs
from results.board import traits_from_config

#: "about 0": at most this robust accuracy
ABOUT_ZERO = 0.02
#: PGD "does not" take a model to about 0: it leaves more than this
PGD_LEAVES = 0.10
#: a difference within this is a tie (not a win)
TIE = 0.0


@dataclass(frozen=True)
class Comparison:
    model: str
    eps: float
    norm: str
    text: str  # the numbers, e.g. "PGD 3.5% vs PGD++ 2.1%"
    holds: bool


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str  # the paper's claim, in short
    where: str  # where the paper makes it
    test: str  # how the records test it
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if not self.comparisons:
            return "not tested"
        ok = sum(c.holds for c in self.comparisons)
        if ok == len(self.comparisons):
            return "holds"
        return "partly" if ok else "does not hold"

    @property
    def score(self) -> str:
        return f"{sum(c.holds for c in self.comparisons)} of {len(self.comparisons)}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


class _Cells:
    """The current ok cells with their traits, and model cards."""

    def __init__(self, cells: pd.DataFrame, models: pd.DataFrame) -> None:
        ok = current_runs(cells[cells["status"] == "ok"]) if len(cells) else cells
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
    return lambda r, t: (t.get("base") == base and t.get("family") == "gradient"
                         and r.attack == t.get("base"))


def _tempered(base: str) -> Callable[[Any, dict], bool]:
    """Its PGD++ versions (NJS or HNS temperature)."""
    return lambda r, t: (t.get("base") == base and t.get("family") == "gradient-temperature"
                         and t.get("scaler") in ("njs", "hns"))


def _on_common(a: Any, b: Any) -> tuple[float, float, int]:
    n = min(int(a.n), int(b.n))
    return sum(a.robust[:n]) / n, sum(b.robust[:n]) / n, n


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
    """The five claims, evaluated at (``norm``, ``eps``) where a claim needs one threat model
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
            b, f, _ = _on_common(group[q], ref)
            comps.append(Comparison(group[q].model, eps, norm,
                                    f"PGD leaves {_pct(b)} on {arch} {q}, {_pct(f)} on {arch} "
                                    "ref", b > f + TIE))
    claims.append(Claim("bnn-look-robust", "BNNs look more robust than float networks under "
                        "PGD", "Sec. 1 and Table 1",
                        f"PGD robust accuracy at {label}, each BNN against the float network "
                        "of the same architecture", comps))

    # 2. PGD++ takes BNNs to about 0 where PGD does not
    comps = []
    for key, cell in sorted(pgd.items()):
        if c.quant(key[0], key[1]) not in ("bnn-wq", "bnn-waq") or key not in pp:
            continue
        p, q, _ = _on_common(cell, pp[key])
        if p <= PGD_LEAVES:
            continue  # PGD already breaks it: nothing for PGD++ to show
        comps.append(Comparison(key[1], eps, norm, f"PGD {_pct(p)}, PGD++ ({pp[key].attack}) "
                                f"{_pct(q)}", q <= ABOUT_ZERO))
    claims.append(Claim("pgdpp-to-zero", "PGD++ takes BNNs to about 0% where PGD does not",
                        "Sec. 6, Table 2",
                        f"at {label}, every normally trained BNN on which PGD leaves more than "
                        f"{_pct(PGD_LEAVES)}: does PGD++ (the better of NJS and HNS) leave at "
                        f"most {_pct(ABOUT_ZERO)}?", comps))

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
            p, o, n = _on_common(cell, cells_o[key])
            comps.append(Comparison(key[1], eps, norm, f"PGD++ {_pct(p)} vs {other} "
                                    f"{_pct(o)} (first {n} points)", p <= o - TIE))
    claims.append(Claim("pgdpp-beats-others", "PGD++ is as strong as or stronger than "
                        "APGD-DLR, Square, DeepFool and BBA on BNNs", "Sec. 6, Table 4",
                        f"at {label}, on every normally trained BNN: PGD++ (the better of NJS "
                        "and HNS) leaves at most the robust accuracy of each other attack, on "
                        "the test points both ran on", comps))

    # 4. FGSM++ beats FGSM (every ε of the norm)
    comps = []
    fgsm = c.pick(_plain("fgsm"))
    fpp = _best_tempered(c, "fgsm")
    for key, cell in sorted(fgsm.items()):
        if key[2] != norm or c.quant(key[0], key[1]) not in ("bnn-wq", "bnn-waq") \
                or key not in fpp:
            continue
        f, q, _ = _on_common(cell, fpp[key])
        comps.append(Comparison(key[1], key[3], norm, f"ε = {key[3]:g}: FGSM {_pct(f)}, "
                                f"FGSM++ ({fpp[key].attack}) {_pct(q)}", q < f - TIE))
    claims.append(Claim("fgsmpp-beats-fgsm", "FGSM++ beats FGSM on BNNs", "Sec. 6, Table 2",
                        f"every recorded {'L∞' if norm == 'linf' else 'L2'} ε, every normally "
                        "trained BNN: FGSM++ (the better of NJS and HNS) leaves less than "
                        "FGSM", comps))

    # 5. PGD++ flips more points than IPROP at every ε (BNN-WAQ MLPs)
    comps = []
    iprop = c.pick(lambda r, t: t.get("family") == "combinatorial")
    ppl = _best_tempered(c, "pgd-linf")
    for key, cell in sorted(iprop.items()):
        if key not in ppl:
            continue
        i, p, n = _on_common(cell, ppl[key])
        comps.append(Comparison(key[1], key[3], "linf", f"ε = {key[3]:g}: IPROP leaves "
                                f"{_pct(i)}, PGD++ ({ppl[key].attack}) {_pct(p)}", p < i - TIE
                                or (p == i == 0)))
    claims.append(Claim("pgdpp-beats-iprop", "PGD++ flips more points than IPROP at every ε",
                        "appendix, Fig. 2",
                        "every L∞ ε recorded for IPROP (BNN-WAQ MLPs): PGD++ leaves less robust "
                        "accuracy than IPROP (both at 0 counts as a tie that holds)", comps))
    return claims
