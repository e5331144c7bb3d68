"""Plain-text views of the records: one board (models × attacks at one threat model, from
:mod:`results.board`, the same board the site renders) and the cost of each attack, as
DataFrames and as Markdown (``python -m bench board``)."""

from __future__ import annotations

import math

import pandas as pd

from results import board as results_board
from results.bestknown import current_runs


def board_frame(cells: pd.DataFrame, norm: str, eps: float,
          models: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`results.board.board` as a DataFrame, one row per model at (norm, ε): clean and
    robust accuracy per attack (fractions; NaN where the attack did not run, "error" where it
    failed, "n/a" where it does not apply to the model, which needs the model records
    ``models``), best-known accuracy, on boards with an exact verifier the share it proved
    robust (``proved``) and the exact robust accuracy (``exact``, NaN where points stayed
    undecided: it then lies in [proved, best_known]), the single best attack, and that
    attack's cost (ms and forward / backward passes per attacked sample). Attack columns are
    in board order.

    Rows are ranked by best-known accuracy, most robust first. ``.attrs["n"]`` holds the test
    points of each (model, attack) cell: a suite may run an attack on a prefix only.
    """
    b = results_board.board(cells, norm, eps, models)
    if b is None:
        return pd.DataFrame()
    names = [c.name for c in b.columns]
    records, counts = [], []
    for r in b.rows:
        row: dict[str, object] = {"model": r.model, "n": r.n,
                                  "clean": math.nan if r.clean is None else r.clean}
        for a in names:
            c = r.cells[a]
            row[a] = {"ok": c.acc, "error": "error", "n/a": "n/a"}.get(c.status, math.nan)
            if row[a] is None:
                row[a] = math.nan
        best = r.best_cell
        row["best_known"] = math.nan if r.best_known is None else r.best_known
        if any(o.exact is not None for o in b.rows):  # boards with a verifier
            ex = r.exact
            row["proved"] = math.nan if ex is None else ex.lower
            row["exact"] = math.nan if ex is None or ex.exact is None else ex.exact
        row["best_attack"] = r.best_attack
        row["best_ms"] = math.nan if best is None or best.ms_per_sample is None \
            else best.ms_per_sample
        row["best_passes"] = "" if best is None or best.forwards_per_sample is None else (
            f"{best.forwards_per_sample:.0f}/{best.backwards_per_sample:.0f}")
        records.append(row)
        counts.append({"model": r.model, **{a: (math.nan if r.cells[a].n is None
                                                 else float(r.cells[a].n)) for a in names}})
    out = pd.DataFrame(records).set_index("model")
    out.attrs["n"] = pd.DataFrame(counts).set_index("model")
    return out


def attack_costs(cells: pd.DataFrame) -> pd.DataFrame:
    """Per attack over the ok cells: how many, and the median / max ms, forward and backward
    passes per attacked sample."""
    ok = current_runs(cells[cells["status"] == "ok"])
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
