"""Render the static leaderboard from the committed records (Jinja, autoescape on).

Pages, all in one flat folder so every link is a plain relative file name (the site works
opened from disk):

- ``index.html``: the suites, when and with what they were run, and a models × threat-model
  overview of best-known robust accuracy with the warning flags;
- ``board-<suite>-<norm>-<ε>.html``: one leaderboard per suite and threat model;
- ``attacks.html``: strength (gap to best-known) and cost of every attack;
- ``paper.html``: the paper's claims, each checked against the records (its conjecture on
  multi-bit networks too, with robust accuracy against bit width), and how far the attacks are
  from the exact verifier's truth (also on ``index.html``);
- ``models.html`` and ``model-<name>.html``: the model cards, diagnostics and curves;
- ``img/*.png`` (matplotlib), ``style.css``, ``sort.js`` (sortable tables, no framework).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from leaderboard import data, plots

from results.board import attack_columns
from results.optimality import TOGETHER
from results.paired import ALPHA

HERE = Path(__file__).resolve().parent

#: Written into every output folder the builder creates. The builder deletes stale pages and
#: figures only in a folder that holds it, and refuses to write into any other non-empty folder.
MARKER = ".qbench-site"


class SiteFolderError(ValueError):
    """The output folder is not empty and was not created by the site builder."""


class SiteWriteError(OSError):
    """Writing the site failed midway (a full disk, a folder made read-only meanwhile)."""


def claim_out_dir(out_dir: Path) -> None:
    """Make ``out_dir`` the builder's own: create it (with the marker) or check the marker.

    An existing empty folder is claimed; a non-empty folder without the marker is refused,
    since cleaning up stale pages there could delete someone else's files.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SiteFolderError(f"--out {out_dir} is a file; give a folder (new, empty, or one "
                              "an earlier `python -m leaderboard` created)")
    if out_dir.is_dir() and not (out_dir / MARKER).is_file() and any(out_dir.iterdir()):
        raise SiteFolderError(
            f"--out {out_dir} is not empty and was not created by the site builder (no "
            f"{MARKER} file in it), so it refuses to write there; give a new or empty folder, "
            "or one an earlier `python -m leaderboard` created")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER).write_text("created by `python -m leaderboard`; stale pages and "
                                      "figures in this folder are deleted on every build\n")
    except OSError as exc:
        raise SiteFolderError(f"--out {out_dir} cannot be created or written ({exc.strerror}: "
                              f"{exc.filename}); give a folder you can write to") from None


def _pct(v) -> str:
    f = data.num(v)
    return "—" if f is None else f"{100 * f:.1f}"


def _sortval(v) -> str:
    f = data.num(v)
    return "" if f is None else repr(f)


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["sortval"] = _sortval
    env.filters["num"] = data.fmt_number
    env.filters["gapstyle"] = data.gap_heat
    env.filters["ms"] = lambda v: "—" if data.num(v) is None else f"{1000 * data.num(v):.3g}"
    env.filters["passes"] = lambda v: "—" if data.num(v) is None else f"{data.num(v):.4g}"
    env.globals.update(BADGES=data.BADGES, KIND_LABEL=data.KIND_LABEL,
                       thresholds={"zero_grad": data.ZERO_GRAD_SHARE, "pp_gap": data.PP_GAP,
                                   "free": data.GRADIENT_FREE_MARGIN},
                       date_range=data.date_range)
    return env


def _plots(out_dir: Path, rec: data.Records, pages: list[dict], attack_rows: list[dict],
           optimal: list[dict], bits_views: list[dict]) -> dict:
    """Draw every figure; returns {'attacks': the cost plot (src, w, h) or None}."""
    img = out_dir / "img"
    kinds = attack_columns(rec.cells)
    best = {}
    for r in rec.best.itertuples():
        best.setdefault((r.suite, r.model, r.norm), []).append((float(r.eps),
                                                                float(r.best_known_acc)))
    for page in pages:
        mc = rec.cells[(rec.cells["model"] == page["name"]) & (rec.cells["status"] == "ok")]
        for s in page["suites"]:
            sc = mc[mc["suite"] == s["name"]]
            for norm in sorted(set(sc["norm"]), key=lambda n: (n != "linf", n)):
                nc = sc[sc["norm"] == norm]
                series = {}
                for attack, g in nc.groupby("attack"):
                    series[attack] = [(float(e), float(a))
                                      for e, a in zip(g["eps"], g["robust_acc"], strict=True)]
                name = f"curve-{data.slug(page['name'])}-{data.slug(s['name'])}-{norm}.png"
                w, h = plots.curves(img / name, norm=norm, series=series, kinds=kinds,
                             best=best.get((s["name"], page["name"], norm), []),
                             title=f"{page['name']} · {s['name']} · "
                                   f"{data.NORM_LABEL.get(norm, norm)}")
                s["plots"].append({"src": f"img/{name}", "w": w, "h": h,
                                   "alt": f"robust accuracy against ε ({norm}) for every "
                                          f"attack on {page['name']}, suite {s['name']}"})
        if page["flips"] and rec.fliprate is not None:
            fr = rec.fliprate[rec.fliprate["model"] == page["name"]]
            series = {a: [(float(e), float(f)) for e, f in zip(g["eps"], g["flip_rate"],
                                                               strict=True)]
                      for a, g in fr.groupby("attack")}
            bands = {}  # the exact verifier's undecided share, above its verified flips
            if "undecided" in fr.columns and "n" in fr.columns:
                for a, g in fr[fr["undecided"].notna()].groupby("attack"):
                    bands[a] = [(float(e), float(f), float(f) + float(u) / float(n))
                                for e, f, u, n in zip(g["eps"], g["flip_rate"], g["undecided"],
                                                      g["n"], strict=True)]
            name = f"fliprate-{data.slug(page['name'])}.png"
            w, h = plots.fliprate(img / name, title=f"{page['name']}: flip rate under L∞ bounds",
                                  series=series, bands=bands)
            page["flip_plot"] = {"src": f"img/{name}", "w": w, "h": h,
                                 "alt": f"flip rate against ε for {page['name']}"}
    for view in optimal:
        name = f"optimal-{data.slug(view['model'])}-{data.slug(view['suite'])}.png"
        w, h = plots.against_exact(img / name, title=f"{view['model']} · {view['suite']}: "
                                   "attacks against the exact verifier",
                                   series=view["series"], band=view["band"], together=TOGETHER)
        view["plot"] = {"src": f"img/{name}", "w": w, "h": h,
                        "alt": f"robust accuracy against L∞ ε of every attack and the exact "
                               f"robust accuracy, {view['model']}"}
    for view in bits_views:
        for a in view["archs"]:
            name = f"bits-{data.slug(view['suite'])}-{data.slug(a['arch'])}-{view['norm']}.png"
            w, h = plots.bits(img / name, rows=a["rows"], columns=view["columns"],
                              title=f"{a['arch']} · {view['suite']} · {view['label']}")
            a["plot"] = {"src": f"img/{name}", "w": w, "h": h,
                         "alt": f"robust accuracy against bit width, {a['arch']}, "
                                f"{view['label']}"}
    size = plots.cost_strength(img / "attacks-cost.png", attack_rows)
    return {"attacks": {"src": "img/attacks-cost.png", "w": size[0], "h": size[1]}
            if size else None}


def build_site(records_root: Path | None, out_dir: Path) -> Path:
    """Write the whole site into ``out_dir`` from the records; returns the index path.

    ``out_dir`` must be new, empty, or a folder this builder created (see
    :func:`claim_out_dir`); otherwise :class:`SiteFolderError` is raised before anything is
    written or deleted.
    """
    out_dir = Path(out_dir)
    if records_root is not None and not Path(records_root).is_dir():
        what = "is not a folder" if Path(records_root).exists() else "does not exist"
        raise SiteFolderError(f"--records {records_root} {what}; give the folder that holds "
                              "the *.cells.jsonl records (the project's: results/records)")
    rec = data.load(records_root)  # a corrupt records file stops here, before --out is made
    claim_out_dir(out_dir)
    try:
        return _render(rec, out_dir)
    except OSError as exc:
        where = f"; {exc.filename}" if exc.filename else ""
        raise SiteWriteError(
            f"cannot write the site into {out_dir} ({exc.strerror or exc}{where}); the folder "
            "holds a partial site: make room or fix the folder and build again (it is cleaned "
            "on every build)") from None


def _render(rec: data.Records, out_dir: Path) -> Path:
    """Every page and figure of the site into the claimed ``out_dir``."""
    boards = data.boards(rec)
    suites = data.suites(rec, boards)
    attack_rows, gap_matrix = data.attack_stats(rec)
    pages = data.model_pages(rec, boards)

    if (out_dir / "img").is_dir():
        shutil.rmtree(out_dir / "img")  # no stale figures of models that left the records
    for stale in list(out_dir.glob("board-*.html")) + list(out_dir.glob("model-*.html")):
        stale.unlink()
    for asset in ("style.css", "sort.js"):
        shutil.copy(HERE / "static" / asset, out_dir / asset)
    optimal = data.optimality_view(rec)
    bits_views = data.bits_view(rec)
    figures = _plots(out_dir, rec, pages, attack_rows, optimal, bits_views)

    env = environment()
    everything = data.provenance(rec.cells, rec.models)
    nav = {"suites": [{"name": s["name"], "boards": s["boards"]} for s in suites]}

    def write(name: str, template: str, **context) -> Path:
        html = env.get_template(template).render(nav=nav, page=name, **context)
        path = out_dir / name
        path.write_text(html, encoding="utf-8")
        return path

    index = write("index.html", "index.html", suites=suites, provenance=everything,
                  n_cells=len(rec.cells), notes=rec.notes,
                  flip_models=[p for p in pages if p["flips"]], optimal=optimal)
    for s in suites:
        for b in s["boards"]:
            write(b["file"], "board.html", board=b, suite=s, provenance=b["provenance"])
    write("attacks.html", "attacks.html", attacks=attack_rows, matrix=gap_matrix,
          cost_plot=figures["attacks"], provenance=everything)
    summaries = {m["model"]: m for s in suites for m in s["matrix"]}
    write("paper.html", "paper.html", claims=data.paper_claims(rec), alpha=ALPHA,
          optimal=optimal, bits=bits_views, rejections=data.integer_rejections_view(rec),
          provenance=everything)
    write("models.html", "models.html", pages=pages, summaries=summaries,
          provenance=data.provenance(rec.models, rec.cells))
    for p in pages:
        write(p["file"], "model.html", model=p, provenance=p["provenance"])
    return index
