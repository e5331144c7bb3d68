"""Robust accuracy against bit width: the float, binarized and multi-bit networks of a suite
side by side, per architecture, at one threat model.

Gupta & Ajanthan (AAAI 2022, conclusion) restrict their study to BNNs and conjecture that the
temperature-scaled attacks "would demystify the fake robustness of multi-bit quantized
networks" too. One row per normally trained model (adversarially trained ones are left out),
read from its card (``quant``: float ``ref`` is 32 bits, ``bnn-waq`` W1A1, ``bnn-wq`` W1A32,
the multi-bit ``w{B}a{A}``): its robust accuracy under PGD, PGD++ NJS and HNS, APGD-DLR and
Square (each attack chosen by its recorded traits), best-known, and how many of the counted
adversarial examples of those cells hold in the model's deployed integer arithmetic (multi-bit
models only; :mod:`zoo.deployed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from results.bestknown import best_known, current_runs
from results.vocabulary import QUANT_BITS, is_plain, is_tempered, traits_from_config

Want = Callable[[str, dict[str, Any]], bool]


def attacks_of(norm: str) -> dict[str, Want]:
    """The columns: label → does a recorded (attack name, traits) belong to it."""
    base = f"pgd-{norm}"
    out: dict[str, Want] = {
        "PGD": lambda a, t: is_plain(a, t, base),
        "PGD++ NJS": lambda a, t: is_tempered(t, base, ("njs",)),
        "PGD++ HNS": lambda a, t: is_tempered(t, base, ("hns",)),
    }
    if norm == "linf":
        out["APGD-DLR"] = lambda a, t: t.get("base") == "apgd-dlr"
        out["Square"] = lambda a, t: t.get("base") == "square"
    return out


@dataclass(frozen=True)
class BitsRow:
    suite: str
    arch: str
    model: str
    quant: str
    weight_bits: int
    act_bits: int  # 32: float activations
    n: int  # test points of best-known (the attacks may have run on a prefix)
    best_known: float | None
    robust: dict[str, float | None] = field(default_factory=dict)  # column → accuracy
    deployed_checked: int = 0  # counted adversarial examples re-checked in integers
    deployed_held: int = 0  # of which still misclassified there

    @property
    def label(self) -> str:
        w, a = self.weight_bits, self.act_bits
        return "float" if w == 32 else f"W{w}A{a}" if a < 32 else f"W{w} (float act.)"


def bits_rows(cells: pd.DataFrame, models: pd.DataFrame, *, norm: str, eps: float,
              best: pd.DataFrame | None = None) -> list[BitsRow]:
    """The rows at (``norm``, ``eps``), by suite, architecture and bit width; ``best`` is the
    cells' :func:`results.bestknown.best_known` when the caller has it already."""
    ok = cells[cells["status"] == "ok"] if len(cells) else cells
    if ok.empty:
        return []
    current = current_runs(ok)
    here = current[(current["norm"] == norm) & ((current["eps"] - eps).abs() < 1e-9)]
    if here.empty:
        return []
    if best is None:
        best = best_known(current)
    best_at = {(r.suite, r.model): r for r in best.itertuples()
               if r.norm == norm and abs(r.eps - eps) < 1e-9}
    cards = {(m.suite, m.model): m.card if isinstance(m.card, dict) else {}
             for m in models.itertuples()} if len(models) else {}
    columns = attacks_of(norm)
    rows = []
    for (suite, model), group in here.groupby(["suite", "model"], sort=True):
        card = cards.get((suite, model), {})
        quant = card.get("quant")
        trained = card.get("adversarial_training")
        if quant not in QUANT_BITS or (isinstance(trained, dict) and trained.get("enabled")):
            continue
        robust: dict[str, float | None] = {}
        checked = held = 0
        for c in group.itertuples():
            traits, _ = traits_from_config(c.attack_config)
            for label, want in columns.items():
                if want(c.attack, traits):
                    robust[label] = c.robust_acc
                    info = c.info if isinstance(c.info, dict) else {}
                    checked += int(info.get("deployed_checked", 0) or 0)
                    held += int(info.get("deployed_held", 0) or 0)
        b = best_at.get((suite, model))
        weight, act = QUANT_BITS[quant]
        rows.append(BitsRow(suite, str(card.get("arch", "")), model, quant, weight, act,
                            int(b.n) if b is not None else 0,
                            float(b.best_known_acc) if b is not None else None,
                            {label: robust.get(label) for label in columns}, checked, held))
    return sorted(rows, key=lambda r: (r.suite, r.arch, r.weight_bits, r.act_bits))


@dataclass(frozen=True)
class Rejected:
    """A cell some of whose counted adversarial examples do not hold in integer arithmetic."""

    suite: str
    model: str
    attack: str
    norm: str
    eps: float
    held: int
    checked: int


def integer_rejections(cells: pd.DataFrame) -> list[Rejected]:
    """Every current ok cell whose counted examples do not all hold in the model's exact
    integer arithmetic (``info.deployed_held`` < ``info.deployed_checked``), fewest held
    first."""
    ok = cells[cells["status"] == "ok"] if len(cells) else cells
    if ok.empty:
        return []
    out = []
    for c in current_runs(ok).itertuples():
        info = c.info if isinstance(c.info, dict) else {}
        checked, held = info.get("deployed_checked"), info.get("deployed_held")
        if isinstance(checked, int) and isinstance(held, int) and held < checked:
            out.append(Rejected(c.suite, c.model, c.attack, c.norm, float(c.eps), held,
                                checked))
    return sorted(out, key=lambda r: (r.held / r.checked, r.model, r.attack, r.eps))
