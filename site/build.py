"""Render the leaderboard: one static page from the records (Jinja, autoescape on)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

import results
from bench import provenance

HERE = Path(__file__).resolve().parent


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["pct"] = lambda v: "—" if v is None or pd.isna(v) else f"{100 * v:.1f}"
    return env


def leaderboard_tables(cells: pd.DataFrame, models: pd.DataFrame) -> list[dict]:
    """One table per (suite, norm, ε): models × attacks of robust accuracy."""
    tables = []
    if cells.empty:
        return tables
    clean = dict(zip(models["model"], models["clean_acc"], strict=False)) if len(models) else {}
    for (suite, norm, eps), group in cells.groupby(["suite", "norm", "eps"], sort=True):
        attacks = sorted(group["attack"].unique())
        rows = []
        for model, mg in group.groupby("model"):
            by_attack = {r.attack: r for r in mg.itertuples()}
            accs = [by_attack[a].robust_acc if a in by_attack else None for a in attacks]
            ok = [a for a in accs if a is not None and not pd.isna(a)]
            rows.append({
                "model": model,
                "clean": clean.get(model, mg["clean_acc"].iloc[0]),
                "cells": [by_attack.get(a) for a in attacks],
                "worst": min(ok) if ok else None,
            })
        rows.sort(key=lambda r: (-1 if r["worst"] is None else -r["worst"], r["model"]))
        tables.append({"suite": suite, "norm": norm, "eps": eps, "attacks": attacks,
                       "rows": rows})
    return tables


def build_site(records_root: Path | None, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` (and assets) from the records; returns the index path."""
    cells = results.load(root=records_root)
    models = results.load_models(root=records_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "static" / "style.css", out_dir / "style.css")
    page = environment().get_template("index.html").render(
        tables=leaderboard_tables(cells, models),
        n_cells=len(cells),
        suites=sorted(cells["suite"].unique()) if len(cells) else [],
        versions=provenance.versions(),
        generated=provenance.now(),
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
