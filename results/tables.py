"""Plain-text views of the records: one board (models × attacks at one threat model) and the
cost of each attack, as DataFrames and as Markdown (``python -m bench board``)."""

from __future__ import annotations

import math

import pandas as pd

from results.bestknown import best_known, current_weights


def _at(cells: pd.DataFrame, norm: str, eps: float) -> pd.DataFrame:
    ok = cells[(cells["norm"] == norm) & ((cells["eps"] - eps).abs() < 1e-9)]
    return current_weights(ok)


def board(cells: pd.DataFrame, norm: str, eps: float) -> pd.DataFrame:
    """One row per model at (norm, ε): clean and robust accuracy per attack (fractions; NaN
    where the attack did not run or failed), best-known accuracy, the single best attack, and
    that attack's cost (ms and forward / backward passes per attacked sample).

    Rows are ranked by best-known accuracy, most robust first. ``.attrs["n"]`` holds the test
    points of each (model, attack) cell: a suite may run an attack on a prefix only.
    """
    here = _at(cells, norm, eps)
    if here.empty:
        return pd.DataFrame()
    ok = here[here["status"] == "ok"]
    acc = ok.pivot_table(index="model", columns="attack", values="robust_acc", aggfunc="last")
    counts = ok.pivot_table(index="model", columns="attack", values="n", aggfunc="last")
    best = best_known(here).set_index("model")
    out = pd.DataFrame(index=sorted(here["model"].unique()))
    out["n"] = best["n"]
    out["clean"] = best["clean_acc"]
    out = out.join(acc)
    out["best_known"] = best["best_known_acc"]
    out["best_attack"] = best["best_attack"]
    cost = ok.set_index(["model", "attack"])
    ms, passes = [], []
    for m, a in zip(out.index, out["best_attack"], strict=True):
        if not isinstance(a, str):  # no ok cell at all for this model
            ms.append(math.nan)
            passes.append("")
            continue
        c = cost.loc[(m, a)]
        ms.append(1000 * float(c["seconds_per_sample"]))
        passes.append(f"{c['forwards_per_sample']:.0f}/{c['backwards_per_sample']:.0f}")
    out["best_ms"], out["best_passes"] = ms, passes
    out.index.name = "model"
    out = out.sort_values(["best_known", "clean"], ascending=False)
    out.attrs["n"] = counts
    return out


def attack_costs(cells: pd.DataFrame) -> pd.DataFrame:
    """Per attack over the ok cells: how many, and the median / max ms, forward and backward
    passes per attacked sample."""
    ok = current_weights(cells[cells["status"] == "ok"])
    if ok.empty:
        return pd.DataFrame()
    ms = ok.assign(ms=1000 * ok["seconds_per_sample"])
    return ms.groupby("attack").agg(
        cells=("ms", "size"), ms_median=("ms", "median"), ms_max=("ms", "max"),
        forwards_median=("forwards_per_sample", "median"),
        backwards_median=("backwards_per_sample", "median"),
    ).sort_values("ms_median")


def to_markdown(df: pd.DataFrame, *, percent: tuple[str, ...] = (), digits: int = 1) -> str:
    """A GitHub Markdown table. Columns in ``percent`` are fractions printed as percentages
    with ``digits`` decimals; other numbers get two decimals below 100; NaN prints as "—".

    With a ``"n"`` column and per-cell counts in ``df.attrs["n"]`` (see :func:`board`), a value
    measured on fewer points than its row's ``n`` gets them in brackets: ``86.0 [50]``.
    """
    if df.empty:
        return "(no cells)"
    frame = df.reset_index()
    counts = df.attrs.get("n")
    first = frame.columns[0]

    def cell(col: str, v: object, row: dict) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "—"
            if col in percent:
                text = f"{100 * v:.{digits}f}"
                if counts is not None and col in counts.columns and "n" in row:
                    k = counts.at[row[first], col]
                    if not math.isnan(k) and int(k) != int(row["n"]):
                        text += f" [{int(k)}]"
                return text
            return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |",
             "|" + "---|" * len(frame.columns)]
    for values in frame.itertuples(index=False):
        row = dict(zip(frame.columns, values, strict=True))
        lines.append("| " + " | ".join(cell(c, v, row) for c, v in row.items()) + " |")
    return "\n".join(lines)
