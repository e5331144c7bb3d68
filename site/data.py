"""From records to what the pages show: boards, warning badges, attack scores, provenance.

Everything here is computed from the committed records only (cell and model records, and the
optional flip-rate CSV); nothing is run. The functions return plain dicts and lists that the
templates render (Jinja with autoescape on, so record strings are always shown as text).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import results
from results import board as results_board
from results import claims
from results.bestknown import best_known_or_note, current_runs
from results.bits import bits_rows, integer_rejections
from results.exact import Exact, exact_summaries
from results.optimality import TOGETHER, optimality
from results.vocabulary import MULTIBIT, NORM_LABEL, family_of

# --- thresholds of the warning badges (gradient-masking checks after Athalye et al. 2018, as
# Gupta & Ajanthan, AAAI 2022, Sec. 6 use them); stated on every page that shows badges ---
ZERO_GRAD_SHARE = 0.10  # share of test points whose input gradient is exactly zero
PP_GAP = 0.10  # plain attack's robust accuracy minus its best ++ (NJS/HNS) variant's
GRADIENT_FREE_MARGIN = 0.01  # gradient-free attack below every gradient attack by at least this

FLIPRATE_COLUMNS = ["model", "attack", "eps", "n", "flip_rate", "seconds", "seconds_per_sample"]

BADGES = {
    # kind: (short label, group, one-line explanation for the legend)
    "zero-grad": ("∇ = 0", "masking",
                  f"at least {ZERO_GRAD_SHARE:.0%} of the test points have an exactly-zero input "
                  "gradient (model diagnostics): gradient attacks are blind on them"),
    "gradient-free": ("black-box wins", "masking",
                      "an attack that uses no gradients (Square, IPROP) leaves lower robust "
                      "accuracy than every gradient-based attack, by at least "
                      f"{100 * GRADIENT_FREE_MARGIN:.0f} point and one test point"),
    "pp-gap": ("PGD ≫ PGD++", "masking",
               f"a plain attack leaves more than {100 * PP_GAP:.0f} points more robust accuracy "
               "than its PGD++ version (NJS/HNS temperature): the plain gradient vanishes"),
    "rejected": ("rejections", "problem",
                 "an attack claimed adversarial examples that verification rejected (outside "
                 "the ε-ball or [0, 1], or not misclassified in eval mode)"),
    "error": ("error", "problem",
              "an attack failed with an error on this model: its column is empty and the "
              "best-known value misses it"),
    "contradiction": ("contradiction", "problem",
                      "an attack broke a test point that the exact verifier proved robust: the "
                      "verifier or the verification of adversarial examples is wrong"),
}


# ------------------------------------------------------------------ small helpers


def num(value: Any) -> float | None:
    """A finite float, or None for None/NaN/non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def slug(name: str) -> str:
    """A file-name-safe, unique form of a name (a hash is added when characters were changed)."""
    name = str(name)
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.").lower()
    if s != name or not s:
        s = f"{s[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}".lstrip("-")
    return s


def fmt_eps(eps: float) -> str:
    """0.1 → '0.1'; 8/255 → '8/255' (when a short decimal would not be exact)."""
    short = f"{eps:.3g}"
    if abs(float(short) - eps) < 1e-12:
        return short
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def threat_label(norm: str, eps: float) -> str:
    return f"{NORM_LABEL.get(norm, norm)} ε = {fmt_eps(eps)}"


def board_file(suite: str, norm: str, eps: float) -> str:
    return f"board-{slug(suite)}-{slug(norm)}-{slug(repr(float(eps)))}.html"


def model_file(model: str) -> str:
    return f"model-{slug(model)}.html"


def attack_kind(name: str, config: dict | None) -> str:
    """The attack's family, from its recorded traits (:func:`results.vocabulary.family_of`;
    never from its name)."""
    return family_of(config)


KIND_LABEL = results_board.FAMILY_LABEL


def config_summary(config: dict | None) -> str:
    """'GradientAttack · loss=ce · steps=20 · scaler=njs(rho=0.01)'."""
    if not isinstance(config, dict):
        return ""
    parts = [str(config.get("class", ""))] if config.get("class") else []
    for k, v in sorted(config.items()):
        if k in ("class", "norm"):
            continue
        if isinstance(v, dict):
            inner = ", ".join(f"{a}={b}" for a, b in sorted(v.items()) if a != k and b is not None)
            head = v.get(k, "")
            v = f"{head}({inner})" if inner else head
        parts.append(f"{k}={v}")
    return " · ".join(parts)


def config_brief(config: dict | None) -> str:
    """The few settings that tell attacks apart: '20 steps · 5 restarts · dlr · NJS'."""
    if not isinstance(config, dict):
        return ""
    parts = []
    steps = config.get("steps")
    if isinstance(steps, int):
        parts.append(f"{steps} step{'s' if steps != 1 else ''}")
    restarts = config.get("restarts")
    if isinstance(restarts, int) and restarts > 1:
        parts.append(f"{restarts} restarts")
    if config.get("loss"):
        parts.append(f"{config['loss']} loss")
    scaler = config.get("scaler")
    if isinstance(scaler, dict):
        name = scaler.get("scaler")
        if name == "fixed":
            parts.append(f"β = {scaler.get('beta')}")
        elif name and name != "none":
            parts.append(str(name).upper())
    return " · ".join(parts) or str(config.get("class", ""))


def heat(value: float | None) -> str:
    """Inline style colouring an accuracy in [0, 1]: pale (0) to deep blue (1)."""
    v = num(value)
    if v is None:
        return ""
    v = min(max(v, 0.0), 1.0)
    lo, hi = (246, 248, 251), (31, 78, 140)
    rgb = tuple(round(a + (b - a) * v ** 0.9) for a, b in zip(lo, hi, strict=True))
    ink = "#fff" if v > 0.55 else "#1b2230"
    return f"background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{ink}"


def gap_heat(gap: float | None) -> str:
    """Inline style colouring a gap to best-known (points of accuracy as a fraction): 0 white,
    ≥ 0.5 deep orange."""
    v = num(gap)
    if v is None:
        return ""
    v = min(max(v / 0.5, 0.0), 1.0)
    lo, hi = (250, 250, 250), (196, 86, 10)
    rgb = tuple(round(a + (b - a) * v ** 0.8) for a, b in zip(lo, hi, strict=True))
    ink = "#fff" if v > 0.6 else "#1b2230"
    return f"background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{ink}"


# ------------------------------------------------------------------ loading


@dataclass
class Records:
    cells: pd.DataFrame
    models: pd.DataFrame
    best: pd.DataFrame  # results.best_known of the ok cells
    fliprate: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)  # problems met while reading


def load(records_root: Path | None) -> Records:
    """The records the site shows: each model's current run (:func:`current_runs`: its latest
    weights and their most common seed), its model records and the flip-rate CSV."""
    cells = results.load(root=records_root)
    cells = current_runs(cells).reset_index(drop=True) if not cells.empty else cells
    models = results.load_models(root=records_root)
    notes: list[str] = []
    best = best_known_or_note(cells, notes)
    root = Path(records_root) if records_root is not None else results.RECORDS_DIR
    fliprate = read_fliprate(root / "fliprate.csv", notes)
    return Records(cells, models, best, fliprate, notes)


def read_fliprate(path: Path, notes: list[str]) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); no flip-rate figures")
        return None
    missing = [c for c in ("model", "attack", "eps", "flip_rate") if c not in df.columns]
    if missing:
        notes.append(f"{path.name} lacks columns {missing}; no flip-rate figures")
        return None
    df = df.copy()
    df["model"] = df["model"].astype(str)
    df["attack"] = df["attack"].astype(str)
    df["eps"] = pd.to_numeric(df["eps"], errors="coerce")
    df["flip_rate"] = pd.to_numeric(df["flip_rate"], errors="coerce")
    return df.dropna(subset=["eps", "flip_rate"])


# ------------------------------------------------------------------ provenance


def provenance(*frames: pd.DataFrame) -> dict:
    """What produced the records shown: commits, library versions, hardware, dates."""
    commits: set[str] = set()
    libs: dict[str, set[str]] = defaultdict(set)
    hardware: set[str] = set()
    dates: list[str] = []
    for df in frames:
        if df is None or df.empty:
            continue
        for v in df.get("versions", []):
            if isinstance(v, dict):
                for k, val in v.items():
                    (commits.add(str(val)) if k == "qbench_commit" else libs[k].add(str(val)))
        hardware.update(str(h) for h in df.get("hardware", []) if h)
        dates.extend(str(c) for c in df.get("created", []) if c)
    dates.sort()
    return {
        "commits": sorted(commits),
        "versions": [(k, " / ".join(sorted(v))) for k, v in sorted(libs.items())],
        "hardware": sorted(hardware),
        "first": dates[0] if dates else "",
        "last": dates[-1] if dates else "",
        "empty": not dates,
    }


def date_range(prov: dict) -> str:
    first, last = prov["first"][:10], prov["last"][:10]
    return first if first == last else f"{first} – {last}"


# ------------------------------------------------------------------ boards


def model_diagnostics(models: pd.DataFrame) -> dict[tuple[str, str], dict]:
    out = {}
    for r in models.itertuples():
        out[(r.suite, r.model)] = r.diagnostics if isinstance(r.diagnostics, dict) else {}
    return out


def row_badges(row: results_board.BoardRow, columns: dict[str, results_board.AttackColumn],
               diag: dict, n: int) -> list[dict]:
    """Warning badges of one model at one threat model, from its board row and the recorded
    traits of the board's attacks."""
    badges = []

    def add(kind: str, detail: str, label: str | None = None) -> None:
        short, group, _ = BADGES[kind]
        badges.append({"kind": kind, "label": label or short, "group": group, "detail": detail})

    share = num(diag.get("zero_grad_share"))
    if share is not None and share >= ZERO_GRAD_SHARE:
        add("zero-grad", f"{100 * share:.1f}% of test points have an exactly-zero input "
            "gradient (plain cross-entropy)", f"∇ = 0 on {100 * share:.0f}%")
    # attacks only: an exact verifier is the ground truth, not evidence about gradients
    ok = {a: c.acc for a, c in row.cells.items() if c.status == "ok" and c.acc is not None
          and columns[a].family != "exact"}
    # compared only on equal test points (a suite may run an attack on a prefix only)
    found = []
    for m in sorted({row.cells[a].n for a in ok}, key=lambda v: -(v or 0)):
        same = {a: v for a, v in ok.items() if row.cells[a].n == m}
        free = {a: v for a, v in same.items() if not columns[a].uses_gradients}
        grad = {a: v for a, v in same.items() if columns[a].uses_gradients}
        if free and grad:
            fa, fv = min(free.items(), key=lambda t: (t[1], t[0]))
            ga, gv = min(grad.items(), key=lambda t: (t[1], t[0]))
            if gv - fv >= max(GRADIENT_FREE_MARGIN, 1 / max(m or n, 1)) - 1e-12:
                where = "" if m == row.n else f" on the first {m} test points"
                found.append(f"{fa} leaves {100 * fv:.1f}%, the best gradient attack "
                             f"({ga}) {100 * gv:.1f}%{where}")
    if found:
        add("gradient-free", found[0])
    gaps = []
    for a, v in ok.items():
        col = columns[a]
        if col.family != "gradient" or col.name != col.base:
            continue  # plain attacks only (not their loss or restart variants)
        pp = {p: pv for p, pv in ok.items() if columns[p].base == col.base
              and columns[p].family == "gradient-temperature"
              and columns[p].scaler in ("njs", "hns")}
        if pp:
            pa, pv = min(pp.items(), key=lambda t: (t[1], t[0]))
            if v - pv > PP_GAP:
                gaps.append((v - pv, a, v, pa, pv))
    if gaps:
        gaps.sort(reverse=True)
        family = "FGSM" if columns[gaps[0][1]].base == "fgsm" else "PGD"
        add("pp-gap", "; ".join(f"{a} {100 * v:.1f}% vs {pa} {100 * pv:.1f}% "
                                f"(+{100 * g:.1f} points)" for g, a, v, pa, pv in gaps),
            f"{family} ≫ {family}++ (+{100 * gaps[0][0]:.0f})")
    rejected = {a: c.rejected for a, c in row.cells.items() if c.rejected > 0}
    if rejected:
        add("rejected", "; ".join(f"{a}: {k} rejected" for a, k in sorted(rejected.items())),
            f"{sum(rejected.values())} rejected")
    contra = row.exact.contradictions if row.exact is not None else {}
    if contra:
        add("contradiction", "; ".join(
            f"{a} broke test point{'s' if len(p) > 1 else ''} {', '.join(map(str, p[:5]))}"
            f"{' …' if len(p) > 5 else ''}, proved robust by {row.exact.verifier}"
            for a, p in sorted(contra.items())),
            f"{sum(len(p) for p in contra.values())} contradicted")
    errors = {a: str(c.error) for a, c in row.cells.items() if c.status == "error"}
    if errors:
        add("error", "; ".join(f"{a}: {e}" for a, e in sorted(errors.items())),
            f"{len(errors)} error{'s' if len(errors) > 1 else ''}")
    return badges


def attack_order(names: list[str], configs: dict[str, dict]) -> list[str]:
    """Attack names in board order (:func:`results.board.ordered`), from their configs."""
    cols = [results_board.attack_column(a, configs.get(a)) for a in names]
    return [c.name for c in results_board.ordered(cols)]


def _column_view(c: results_board.AttackColumn) -> dict:
    return {"name": c.name, "kind": c.family, "family": c.family,
            "family_label": KIND_LABEL.get(c.family, c.family), "version": c.version,
            "traits_source": c.traits_source, "uses_gradients": c.uses_gradients}


def _groups(columns: list[results_board.AttackColumn]) -> list[dict]:
    """Consecutive columns of one family group, for the header row above the attack names."""
    out: list[dict] = []
    for c in columns:
        kind = "gradient" if c.family == "gradient-temperature" else c.family
        if out and out[-1]["kind"] == kind:
            out[-1]["span"] += 1
        else:
            out.append({"label": GROUP_SHORT.get(kind, kind), "kind": kind, "span": 1,
                        "title": KIND_LABEL.get(kind, kind)})
    return out


#: short column-group labels (the headers of one or two narrow columns)
GROUP_SHORT = {"gradient": "gradient", "minimum-norm": "min-norm", "gradient-free": "no ∇",
               "combinatorial": "comb.", "exact": "exact"}


def exact_view(ex: Exact | None) -> dict | None:
    """What the pages show of a row's exact ground truth: the exact robust accuracy, or the
    interval [proved robust, best known] where some points were left undecided, and every
    attack's gap to it on the decided points (smallest first)."""
    if ex is None:
        return None
    interval = ex.exact is None
    text = (f"{100 * ex.lower:.1f}–{100 * ex.upper:.1f}" if interval
            else f"{100 * ex.lower:.1f}")
    title = (f"{ex.verifier} on {ex.n} test points: {ex.proved} proved robust, {ex.broken} "
             f"broken, {ex.unknown} undecided, {ex.clean_wrong} misclassified clean")
    title += (f"; the exact robust accuracy lies in [{100 * ex.lower:.1f}%, "
              f"{100 * ex.upper:.1f}%]" if interval
              else f"; exact robust accuracy {100 * ex.lower:.1f}%")
    gaps = [{"attack": a, "gap": g, "decided": ex.decided_of.get(a, 0),
             "style": gap_heat(g)} for a, g in sorted(ex.gaps.items(), key=lambda t: (t[1], t[0]))]
    return {"text": text, "sort": ex.lower, "interval": interval, "title": title,
            "style": heat(ex.lower), "proved": ex.proved, "unknown": ex.unknown,
            "decided": ex.decided, "n": ex.n, "verifier": ex.verifier, "gaps": gaps,
            "gap_of": {g["attack"]: g["gap"] for g in gaps}}


def _cell_view(c: results_board.BoardCell, row: results_board.BoardRow) -> dict | None:
    if c.status == "not run":
        return None
    if c.status == "n/a":
        return {"status": "n/a", "acc": None, "title": f"{c.attack}: not applicable to this "
                "model (see the attacks page)", "n": row.n, "is_best": False, "rejected": 0,
                "style": "", "gap": None, "error": None}
    acc = c.acc if c.status == "ok" else None
    best = row.best_known
    gap = acc - best if acc is not None and best is not None else None
    title = [f"{c.attack}: " + (f"{100 * acc:.1f}% robust" if acc is not None
                                else f"error: {c.error}")]
    if gap is not None:
        title.append(f"+{100 * gap:.1f} points above best-known")
    if c.ms_per_sample is not None:
        title.append(f"{c.ms_per_sample:.2f} ms/sample")
    if c.rejected:
        title.append(f"{c.rejected} candidates rejected by verification")
    if c.n is not None and c.n != row.n:
        title.append(f"on the first {c.n} test points only")
    if row.exact is not None and c.attack in row.exact.gaps:
        title.append(f"+{100 * row.exact.gaps[c.attack]:.1f} points above the exact robust "
                     f"accuracy on the {row.exact.decided_of[c.attack]} points the verifier "
                     "decided")
    return {"acc": acc, "status": c.status, "error": c.error, "gap": gap,
            "is_best": row.best_attack == c.attack, "rejected": c.rejected,
            "style": heat(acc), "title": " · ".join(title), "n": c.n}


def boards(rec: Records) -> list[dict]:
    """One leaderboard per (suite, norm, ε) (:func:`results.board.boards`, the board of
    ``python -m bench board`` too): models ranked by best-known robust accuracy."""
    out: list[dict] = []
    if rec.cells.empty:
        return out
    diags = model_diagnostics(rec.models)
    for b in results_board.boards(rec.cells, rec.models):
        columns = {c.name: c for c in b.columns}
        group = rec.cells[(rec.cells["suite"] == b.suite) & (rec.cells["norm"] == b.norm)
                          & (rec.cells["eps"] == b.eps)]
        rows = []
        for r in b.rows:
            rows.append({
                "model": r.model, "file": model_file(r.model), "clean": r.clean,
                "clean_style": heat(r.clean), "best": r.best_known,
                "best_style": heat(r.best_known), "best_attack": r.best_attack,
                "best_attack_acc": r.best_attack_acc,
                "carried": r.from_smaller_eps,
                "ensemble": (r.best_known is not None and r.best_attack_acc is not None
                             and r.best_known < r.best_attack_acc - 1e-12),
                "unique": {k: v for k, v in r.unique_breaks.items() if v},
                "cells": [_cell_view(r.cells[c.name], r) for c in b.columns],
                "badges": row_badges(r, columns, diags.get((b.suite, r.model), {}), b.n),
                "n_cells": sum(c.status in ("ok", "error") for c in r.cells.values()),
                "n": r.n,
                "exact": exact_view(r.exact),
            })
        for r in rows:  # competition ranking: equal best-known values share a rank
            r["rank"] = (1 + sum(1 for o in rows if o["best"] is not None
                                 and o["best"] > r["best"] + 1e-12)
                         if r["best"] is not None else None)
        out.append({
            "suite": b.suite, "dataset": b.dataset, "norm": b.norm, "eps": b.eps,
            "label": threat_label(b.norm, b.eps), "eps_label": fmt_eps(b.eps),
            "norm_label": NORM_LABEL.get(b.norm, b.norm),
            "file": board_file(b.suite, b.norm, b.eps), "n": b.n,
            "attacks": [_column_view(c) for c in b.columns], "groups": _groups(b.columns),
            "rows": rows, "not_run": b.not_run,
            "has_exact": any(r["exact"] is not None for r in rows),
            "n_errors": sum(c.status == "error" for r in b.rows for c in r.cells.values()),
            "flagged": sum(1 for r in rows if r["badges"]),
            "legacy": sorted(c.name for c in b.columns if c.traits_source != "recorded"),
            "provenance": provenance(current_runs(group)),
        })
    return out


# ------------------------------------------------------------------ index


def suites(rec: Records, all_boards: list[dict]) -> list[dict]:
    """Per suite: what was run, when, with what; the boards; a models × threat-model matrix."""
    out = []
    cells = rec.cells
    for suite in sorted(set(cells["suite"]) | set(rec.models["suite"])):
        sc = cells[cells["suite"] == suite]
        sm = rec.models[rec.models["suite"] == suite]
        sboards = [b for b in all_boards if b["suite"] == suite]
        sboards.sort(key=lambda b: (b["norm"] != "linf", b["norm"], b["eps"]))
        eps = defaultdict(list)
        for b in sboards:
            eps[b["norm"]].append(b["eps_label"])
        models = sorted(set(sc["model"]) | set(sm["model"]))
        matrix = []
        for m in models:
            entries, flags = [], {}
            for b in sboards:
                row = next((r for r in b["rows"] if r["model"] == m), None)
                if row is None:
                    entries.append(None)
                    continue
                entries.append({"best": row["best"], "style": row["best_style"],
                                "badges": row["badges"], "file": b["file"]})
                for badge in row["badges"]:
                    flags.setdefault(badge["kind"], badge)
            clean = next((r["clean"] for b in sboards for r in b["rows"] if r["model"] == m),
                         None)
            known = [e["best"] for e in entries if e and e["best"] is not None]
            matrix.append({
                "model": m, "file": model_file(m), "clean": clean, "clean_style": heat(clean),
                "entries": entries, "mean": float(np.mean(known)) if known else None,
                "flags": [{"kind": k, "label": BADGES[k][0], "group": BADGES[k][1],
                           "detail": BADGES[k][2]} for k in BADGES if k in flags],
            })
        matrix.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0), r["model"]))
        prov = provenance(sc, sm)
        out.append({
            "name": suite,
            "datasets": sorted(set(sc["dataset"]) | set(sm["dataset"])),
            "n": sorted({int(v) for v in sc["n"]} | {int(v) for v in sm["n"]}),
            "models": models, "attacks": attack_order(
                sorted(sc["attack"].unique()),
                {r.attack: r.attack_config for r in sc.itertuples()}),
            "eps": [(NORM_LABEL.get(k, k), v) for k, v in eps.items()],
            "n_cells": len(sc), "n_errors": int((sc["status"] == "error").sum()),
            "n_rejected": int(sc["rejected"].fillna(0).sum()) if len(sc) else 0,
            "boards": sboards, "matrix": matrix, "provenance": prov,
            "dates": date_range(prov) if not prov["empty"] else "",
            "flagged": sorted({r["model"] for b in sboards for r in b["rows"] if r["badges"]}),
        })
    return out


# ------------------------------------------------------------------ attacks


def attack_stats(rec: Records) -> tuple[list[dict], dict]:
    """Per attack: strength (mean gap to best-known), hits, cost; and an attack × model gap
    matrix."""
    cells = rec.cells
    if cells.empty:
        return [], {"models": [], "rows": []}
    bk = rec.best.set_index(["suite", "model", "norm", "eps"])
    exact_gaps: dict[str, list[float]] = defaultdict(list)
    for ex in exact_summaries(current_runs(cells)).values():
        for a, g in ex.gaps.items():
            exact_gaps[a].append(g)
    n_attacks = bk["attacks"].to_dict()
    best = bk["best_known_acc"].to_dict()
    rows = []
    per_model: dict[tuple[str, str], list[float]] = defaultdict(list)
    for attack, g in cells.groupby("attack", sort=True):
        gaps, hits, compared = [], 0, 0
        unique = 0
        for c in g.itertuples():
            key = (c.suite, c.model, c.norm, c.eps)
            acc = num(c.robust_acc)
            if c.status != "ok" or acc is None or key not in best:
                continue
            gap = acc - best[key]
            per_model[(attack, c.model)].append(gap)
            if n_attacks.get(key, 0) >= 2:
                gaps.append(gap)
                compared += 1
                hits += gap <= 1e-12
            ub = bk.loc[key, "unique_breaks"]
            unique += int(ub.get(attack, 0)) if isinstance(ub, dict) else 0
        ok = g[g["status"] == "ok"]
        sps = [num(v) for v in ok["seconds_per_sample"]]
        sps = [v for v in sps if v is not None]
        fw = [num(v) for v in ok["forwards_per_sample"]]
        bw = [num(v) for v in ok["backwards_per_sample"]]
        fw = [v for v in fw if v is not None]
        bw = [v for v in bw if v is not None]
        first = g.iloc[0]
        mean_gap = float(np.mean(gaps)) if gaps else None
        rows.append({
            "name": attack, "norms": sorted({NORM_LABEL.get(v, v) for v in g["norm"]}),
            "kind": attack_kind(attack, first["attack_config"]),
            "config": config_summary(first["attack_config"]),
            "brief": config_brief(first["attack_config"]),
            "suites": sorted(set(g["suite"])), "cells": len(g),
            "errors": int((g["status"] == "error").sum()),
            "rejected": int(g["rejected"].fillna(0).sum()),
            "gap": mean_gap, "gap_style": gap_heat(mean_gap),
            "max_gap": float(np.max(gaps)) if gaps else None,
            "exact_gap": float(np.mean(exact_gaps[attack])) if exact_gaps.get(attack) else None,
            "exact_rows": len(exact_gaps.get(attack, [])),
            "hits": hits, "compared": compared, "unique": unique,
            "sps": float(np.median(sps)) if sps else None,
            "fw": float(np.mean(fw)) if fw else None,
            "bw": float(np.mean(bw)) if bw else None,
        })
    rows.sort(key=lambda r: (r["gap"] is None, r["gap"] if r["gap"] is not None else 0,
                             r["sps"] or 0, r["name"]))
    models = sorted(set(cells["model"]))
    matrix = []
    for r in rows:
        entries = []
        for m in models:
            v = per_model.get((r["name"], m))
            g = float(np.mean(v)) if v else None
            entries.append({"gap": g, "style": gap_heat(g)})
        matrix.append({"name": r["name"], "entries": entries})
    return rows, {"models": [{"name": m, "file": model_file(m)} for m in models],
                  "rows": matrix}


# ------------------------------------------------------------------ models

DIAG_ROWS = [  # (label, base key)
    ("share of zero input gradients", "zero_grad_share"),
    ("‖ψ‖₂, ψ = p − y", "psi_norm"),
    ("‖∂ℓ/∂x‖₂", "grad_norm"),
]
DIAG_COLUMNS = [("plain (β = 1)", ""), ("NJS", "_njs"), ("HNS", "_hns")]
DIAG_SCALARS = [
    ("Jacobian singular values, mean", "jac_sv_mean"),
    ("Jacobian singular values, std", "jac_sv_std"),
    ("NJS β₁", "njs_beta1"),
    ("HNS β, mean", "hns_beta_mean"),
    # multi-bit models: the test points their exact integer arithmetic classifies otherwise
    ("test points classified otherwise in integer arithmetic", "deployed_clean_disagree"),
]


def fmt_number(v: Any) -> str:
    f = num(v)
    if f is None:
        return "—" if v is None else str(v)
    if f == 0:
        return "0"
    if abs(f) >= 1e4 or abs(f) < 1e-3:
        return f"{f:.3e}"
    return f"{f:.4g}"


def diagnostics_view(diag: dict) -> dict:
    """Before/after-scaling table of the signal-propagation diagnostics (the paper's Table 13)."""
    used = set()
    table = []
    for label, base in DIAG_ROWS:
        values = []
        for _, suffix in DIAG_COLUMNS:
            k = base + suffix
            used.add(k)
            v = diag.get(k)
            if base == "zero_grad_share" and num(v) is not None:
                values.append(f"{100 * num(v):.1f}%")
            else:
                values.append(fmt_number(v) if k in diag else "—")
        if any(v != "—" for v in values):
            table.append({"label": label, "cells": values})
    scalars = []
    for label, k in DIAG_SCALARS:
        used.add(k)
        if k in diag:
            scalars.append({"label": label, "value": fmt_number(diag[k])})
    other = [{"label": k, "value": fmt_number(v)} for k, v in sorted(diag.items())
             if k not in used]
    return {"table": table, "columns": [c for c, _ in DIAG_COLUMNS], "scalars": scalars,
            "other": other, "empty": not diag}


def card_view(card: dict) -> list[dict]:
    """The model card as (key, value) rows; nested dicts become 'k=v' lists."""
    rows = []
    for k, v in sorted(card.items()):
        if k == "description":
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in sorted(v.items()))
        elif isinstance(v, float):
            v = f"{100 * v:.2f}%" if k.endswith("_acc") else fmt_number(v)
        v = str(v)
        short = v[:16] + "…" if k.endswith("sha256") and len(v) > 16 else v
        rows.append({"key": k, "value": short, "full": v})
    return rows


def model_pages(rec: Records, all_boards: list[dict]) -> list[dict]:
    cells, models = rec.cells, rec.models
    names = set(cells["model"]) | set(models["model"])
    flip_models = set(rec.fliprate["model"]) if rec.fliprate is not None else set()
    names |= flip_models
    pages = []
    for m in sorted(names):
        mc = cells[cells["model"] == m]
        mm = models[models["model"] == m]
        card = {}
        for c in mm["card"]:
            if isinstance(c, dict):
                card = {**card, **c}
        suites_view = []
        for suite in sorted(set(mc["suite"]) | set(mm["suite"])):
            rows = []
            for b in all_boards:
                if b["suite"] != suite:
                    continue
                r = next((r for r in b["rows"] if r["model"] == m), None)
                if r is not None:
                    rows.append({"board": b, "row": r})
            rows.sort(key=lambda t: (t["board"]["norm"] != "linf", t["board"]["norm"],
                                     t["board"]["eps"]))
            rec_m = mm[mm["suite"] == suite]
            diag = rec_m["diagnostics"].iloc[-1] if len(rec_m) else {}
            sc = mc[mc["suite"] == suite]
            betas = []
            for c in sc.sort_values(["attack", "norm", "eps"]).itertuples():
                info = c.info if isinstance(c.info, dict) else {}
                if any(k.startswith("beta") for k in info):
                    betas.append({
                        "attack": c.attack, "label": threat_label(c.norm, c.eps),
                        "mean": fmt_number(info.get("beta_mean")),
                        "min": fmt_number(info.get("beta_min")),
                        "max": fmt_number(info.get("beta_max")),
                        "beta1": fmt_number(info.get("beta1")) if "beta1" in info else "—",
                        "fallback": (f"{100 * num(info['beta_fallback_share']):.1f}%"
                                     if num(info.get("beta_fallback_share")) is not None
                                     else "—"),
                    })
            gaps = defaultdict(list)
            for t in rows:
                for g in (t["row"]["exact"] or {}).get("gaps", []):
                    gaps[g["attack"]].append(g["gap"])
            suites_view.append({
                "name": suite, "rows": rows, "plots": [],
                "exact_attacks": sorted(gaps, key=lambda a: (float(np.mean(gaps[a])), a)),
                "diagnostics": diagnostics_view(diag if isinstance(diag, dict) else {}),
                "betas": betas,
                "clean": num(rec_m["clean_acc"].iloc[-1]) if len(rec_m) else None,
                "n": int(rec_m["n"].iloc[-1]) if len(rec_m) else None,
            })
        flips = None
        if m in flip_models:
            fr = rec.fliprate[rec.fliprate["model"] == m].sort_values(["attack", "eps"])
            flips = [{"attack": r.attack, "eps": fmt_eps(float(r.eps)), "eps_value": float(r.eps),
                      "n": fmt_number(getattr(r, "n", None)),
                      "rate": float(r.flip_rate), "style": heat(1 - float(r.flip_rate)),
                      "sps": num(getattr(r, "seconds_per_sample", None))}
                     for r in fr.itertuples()]
        pages.append({
            "name": m, "file": model_file(m), "card": card_view(card),
            "description": card.get("description", ""),
            "chips": [str(card[k]) for k in ("dataset", "arch", "quant") if card.get(k)],
            "suites": suites_view, "flips": flips, "flip_plot": None,
            "provenance": provenance(mc, mm),
        })
    return pages


# ------------------------------------------------------------------ paper vs this zoo


def paper_claims(rec: Records) -> list[dict]:
    """The paper's claims checked on the records (:func:`results.claims.paper_claims`)."""
    out = []
    for c in claims.paper_claims(rec.cells, rec.models):
        out.append({"key": c.key, "claim": c.claim, "where": c.where, "test": c.test,
                    "verdict": c.verdict, "score": c.score,
                    "comparisons": [{"model": x.model, "file": model_file(x.model),
                                     "text": x.text, "outcome": x.outcome}
                                    for x in c.comparisons]})
    return out


# ------------------------------------------------------------------ how far from optimal


def optimality_view(rec: Records) -> list[dict]:
    """"How far from optimal are the attacks?" (:func:`results.optimality.optimality`): per
    model with an exact verifier, each threat model's truth and every attack's misses of the
    truly breakable points; ``plot`` is filled in by the builder."""
    out: dict[tuple, dict] = {}
    for o in optimality(rec.cells):
        ex = o.exact
        view = out.setdefault((o.suite, o.model), {
            "suite": o.suite, "model": o.model, "file": model_file(o.model), "rows": [],
            "plot": None, "series": {}, "band": []})
        truth = (f"{100 * ex.lower:.1f}" if ex.exact is not None
                 else f"[{100 * ex.lower:.1f}, {100 * ex.upper:.1f}]")
        view["rows"].append({
            "threat": threat_label(o.norm, o.eps), "n": ex.n, "truth": truth,
            "breakable": ex.broken, "undecided": ex.unknown, "verifier": ex.verifier,
            "misses": [{"attack": m.attack, "together": m.attack == TOGETHER, "n": m.n,
                        "robust_acc": m.robust_acc, "breakable": m.breakable,
                        "missed": m.missed, "share": m.missed_share} for m in o.misses]})
        for m in o.misses:
            view["series"].setdefault(m.attack, []).append((o.eps, m.robust_acc))
        view["band"].append((o.eps, ex.lower, ex.upper))
    return list(out.values())


# ------------------------------------------------------------------ bit widths

#: the threat models of the bit-width comparison (the closing table of the multi-bit issue)
BITS_THREATS = (("linf", 0.1), ("l2", 1.5))
#: a network where the better PGD++ leaves at least this much more than best-known is named
#: on the page: the temperature did not remove what masks its gradients
PGDPP_SHORT = 0.10


def bits_view(rec: Records) -> list[dict]:
    """Robust accuracy against bit width (:func:`results.bits.bits_rows`), per threat model
    and architecture, for suites with multi-bit models; ``plot`` is filled in by the
    builder."""
    out: list[dict] = []
    for norm, eps in BITS_THREATS:
        rows = bits_rows(rec.cells, rec.models, norm=norm, eps=eps, best=rec.best)
        for suite in sorted({r.suite for r in rows if r.quant in MULTIBIT}):
            suite_rows = [r for r in rows if r.suite == suite]
            archs: dict[str, list] = {}
            for r in suite_rows:
                archs.setdefault(r.arch, []).append(r)
            short = []
            for r in suite_rows:
                pp = [v for k, v in r.robust.items() if k.startswith("PGD++") and v is not None]
                if pp and r.best_known is not None and min(pp) - r.best_known >= PGDPP_SHORT:
                    short.append({"model": r.model, "file": model_file(r.model),
                                  "label": r.label, "pgdpp": min(pp), "best": r.best_known})
            out.append({"suite": suite, "norm": norm, "eps": eps, "short": short,
                        "label": threat_label(norm, eps),
                        "columns": list(next(iter(archs.values()))[0].robust),
                        "archs": [{"arch": arch, "plot": None, "rows": [{
                            "model": r.model, "file": model_file(r.model), "label": r.label,
                            "weight_bits": r.weight_bits, "act_bits": r.act_bits,
                            "robust": r.robust, "best": r.best_known, "n": r.n,
                            "deployed": (None if not r.deployed_checked else
                                         r.deployed_held / r.deployed_checked),
                            "deployed_counts": (r.deployed_held, r.deployed_checked)}
                            for r in arch_rows]} for arch, arch_rows in sorted(archs.items())]})
    return out


def integer_rejections_view(rec: Records) -> list[dict]:
    """The cells whose counted examples do not all hold in integer arithmetic."""
    return [{"model": r.model, "file": model_file(r.model), "attack": r.attack,
             "label": threat_label(r.norm, r.eps), "held": r.held, "checked": r.checked,
             "share": r.held / r.checked} for r in integer_rejections(rec.cells)]
