"""Static figures (matplotlib's Agg canvas, no pyplot state): PNG files under ``img/``."""

from __future__ import annotations

import math
from pathlib import Path

from leaderboard.data import NORM_LABEL, fmt_eps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from results.board import AttackColumn

PALETTE = ["#1f4e8c", "#d1495b", "#2a9d8f", "#e9a23b", "#7b4fa0", "#6c8a2b", "#c2185b",
           "#3d7dca", "#8d6e63", "#00838f", "#ef6c00", "#546e7a"]
STYLE = {"none": "-", "njs": "--", "hns": "-.", "njs-raw": (0, (1, 1)), "fixed": ":"}
INK, MUTED, GRID = "#1b2230", "#5b6577", "#e3e7ee"


def _text(s: str) -> str:
    """Record text as plain matplotlib text: no mathtext, not hidden from the legend."""
    s = str(s).replace("$", r"\$")
    return f"·{s}" if s.startswith("_") else s


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style_axes(ax) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa3b2")
    ax.tick_params(colors=MUTED, labelsize=8.5)


def _finish(ax, *, xlabel: str, ylabel: str, title: str, **legend) -> None:
    """A percentage axis (0-100 with a margin), its labels and title, the legend outside."""
    ax.set_ylim(-3, 103)
    ax.set_xlabel(xlabel, color=MUTED, fontsize=9)
    ax.set_ylabel(ylabel, color=MUTED, fontsize=9)
    ax.set_title(_text(title), loc="left", fontsize=10, color=INK)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8, **legend)


def _save(fig: Figure, path: Path) -> tuple[int, int]:
    """Write the PNG; returns its size in pixels (for the img tag)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None}, facecolor="white")
    w, h = fig.get_size_inches() * fig.dpi
    return round(w), round(h)


def curves(path: Path, *, title: str, norm: str, series: dict[str, list[tuple[float, float]]],
           best: list[tuple[float, float]], kinds: dict[str, AttackColumn]) -> tuple[int, int]:
    """Robust accuracy (%) against ε: one line per attack, best-known as a wide grey band.

    ``kinds`` gives each attack's recorded traits (:func:`results.board.attack_column`): one
    colour per base attack, the line style by temperature, square markers for attacks that
    use no gradients."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    _style_axes(ax)
    colours: dict[str, str] = {}
    if best:
        xs, ys = zip(*sorted(best), strict=True)
        ax.plot(xs, [100 * y for y in ys], color="#1b2230", alpha=0.18, linewidth=9,
                solid_capstyle="round", label="best known", zorder=1)
    for attack in sorted(series, key=lambda a: (kinds[a].sort_key if a in kinds else (9, a))):
        pts = sorted(series[attack])
        col = kinds.get(attack)
        base = col.base if col is not None else attack
        colour = colours.setdefault(base, PALETTE[len(colours) % len(PALETTE)])
        xs, ys = zip(*pts, strict=True)
        free = col is not None and not col.uses_gradients
        ax.plot(xs, [100 * y for y in ys], color=colour,
                linestyle=STYLE.get(col.scaler if col is not None else "none", "-"),
                marker="s" if free else "o", markersize=4, linewidth=1.6,
                label=_text(attack), zorder=3)
    eps = sorted({x for pts in series.values() for x, _ in pts})
    ax.set_xticks(eps, [fmt_eps(e) for e in eps])
    _finish(ax, xlabel=f"ε ({NORM_LABEL.get(norm, norm)})", ylabel="robust accuracy (%)",
            title=title, handlelength=2.6)
    return _save(fig, path)


def fliprate(path: Path, *, title: str, series: dict[str, list[tuple[float, float]]],
             bands: dict[str, list[tuple[float, float, float]]] | None = None
             ) -> tuple[int, int]:
    """Share of test points whose prediction flips, against the L∞ bound, per attack; an
    attack with a band (an exact verifier: its undecided share) is drawn in black with the
    band shaded above its line."""
    fig = _figure(7.4, 3.4)
    ax = fig.add_subplot()
    _style_axes(ax)
    bands = bands or {}
    for i, attack in enumerate(sorted(series)):
        xs, ys = zip(*sorted(series[attack]), strict=True)
        colour = KIND_COLOUR["exact"] if attack in bands else PALETTE[i % len(PALETTE)]
        if attack in bands:
            bx, lo, hi = zip(*sorted(bands[attack]), strict=True)
            ax.fill_between(bx, [100 * v for v in lo], [100 * v for v in hi], color=colour,
                            alpha=0.15, linewidth=0, label=_text(f"{attack}: undecided"))
        ax.plot(xs, [100 * y for y in ys], color=colour, marker="s" if attack in bands else "o",
                markersize=4, linewidth=1.8, label=_text(attack))
    _finish(ax, xlabel="ε (L∞)", ylabel="flip rate (%)", title=title)
    return _save(fig, path)


def against_exact(path: Path, *, title: str, series: dict[str, list[tuple[float, float]]],
                  band: list[tuple[float, float, float]], together: str) -> tuple[int, int]:
    """Robust accuracy (%) against L∞ ε of each attack and of all attacks together (thick),
    beside the exact robust accuracy (black; shaded from proved robust up to best-known where
    the verifier left points undecided)."""
    fig = _figure(7.4, 3.6)
    ax = fig.add_subplot()
    _style_axes(ax)
    bx, lo, hi = zip(*sorted(band), strict=True)
    ax.fill_between(bx, [100 * v for v in lo], [100 * v for v in hi], color="#1b1b1b",
                    alpha=0.15, linewidth=0, label="exact: undecided")
    ax.plot(bx, [100 * v for v in lo], color="#1b1b1b", marker="s", markersize=4,
            linewidth=2.2, label="exact (proved robust)", zorder=4)
    others = sorted(a for a in series if a != together)
    for i, attack in enumerate([*others, together] if together in series else others):
        xs, ys = zip(*sorted(series[attack]), strict=True)
        thick = attack == together
        ax.plot(xs, [100 * y for y in ys], color=INK if thick else PALETTE[i % len(PALETTE)],
                linestyle=":" if thick else "-", marker="o", markersize=3.5,
                linewidth=2.4 if thick else 1.3, label=_text(attack), zorder=3)
    ax.set_xticks(bx, [fmt_eps(e) for e in bx])
    _finish(ax, xlabel="ε (L∞)", ylabel="robust accuracy (%)", title=title)
    return _save(fig, path)


#: one colour per attack family (results.vocabulary.FAMILIES)
KIND_COLOUR = {"gradient": "#1f4e8c", "gradient-temperature": "#2a9d8f",
               "minimum-norm": "#e9a23b", "gradient-free": "#d1495b", "combinatorial": "#7b4fa0",
               "exact": "#1b1b1b"}


def cost_strength(path: Path, rows: list[dict]) -> tuple[int, int] | None:
    """Attacks as points: seconds per sample (log) against mean gap to best-known."""
    pts = [r for r in rows if r["sps"] and r["gap"] is not None]
    if not pts:
        return None
    fig = _figure(7.4, 3.8)
    ax = fig.add_subplot()
    _style_axes(ax)
    for kind, colour in KIND_COLOUR.items():
        sel = [r for r in pts if r["kind"] == kind]
        if sel:
            ax.scatter([1000 * r["sps"] for r in sel], [100 * r["gap"] for r in sel], s=28,
                       color=colour, label=kind, zorder=3)
    placed: list[tuple[float, float, int]] = []  # crude de-overlap of the labels
    for r in sorted(pts, key=lambda r: (r["gap"], r["sps"])):
        x, y = math.log10(1000 * r["sps"]), 100 * r["gap"]
        shift = sum(1 for px, py, _ in placed if abs(px - x) < 0.35 and abs(py - y) < 4)
        placed.append((x, y, shift))
        ax.annotate(_text(r["name"]), (1000 * r["sps"], 100 * r["gap"]), fontsize=7,
                    color=MUTED, xytext=(4, 3 + 9 * shift), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds per attacked sample (median, log scale)", color=MUTED,
                  fontsize=9)
    ax.set_ylabel("mean gap to best known (points)", color=MUTED, fontsize=9)
    ax.set_title("Cost and strength of each attack (lower left is better)", loc="left",
                 fontsize=10, color=INK)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    return _save(fig, path)


def bits(path: Path, *, title: str, rows: list[dict], columns: list[str]) -> tuple[int, int]:
    """Robust accuracy (%) against bit width: one line per attack column and best-known over
    the networks whose weights and activations have the same width (1: BNN-WAQ, 32: float);
    weight-only networks (float activations) as hollow markers of best-known."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    _style_axes(ax)
    same = sorted((r for r in rows if r["act_bits"] == r["weight_bits"]),
                  key=lambda r: r["weight_bits"])
    xs = [r["weight_bits"] for r in same]
    for i, col in enumerate(columns):
        pts = [(x, r["robust"].get(col)) for x, r in zip(xs, same, strict=True)
               if r["robust"].get(col) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts],
                    color=PALETTE[i % len(PALETTE)], marker="o", markersize=4, linewidth=1.6,
                    linestyle="-" if i == 0 else "--", label=_text(col), zorder=3)
    best = [(x, r["best"]) for x, r in zip(xs, same, strict=True) if r["best"] is not None]
    if best:
        ax.plot([p[0] for p in best], [100 * p[1] for p in best], color=INK, alpha=0.18,
                linewidth=9, solid_capstyle="round", label="best known", zorder=1)
    weight_only = [r for r in rows if r not in same and r["best"] is not None]
    if weight_only:
        ax.plot([r["weight_bits"] for r in weight_only], [100 * r["best"] for r in weight_only],
                linestyle="none", marker="o", markersize=7, markerfacecolor="none",
                color=INK, label="best known, float activations", zorder=4)
    ticks = sorted({r["weight_bits"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) if t < 32 else "32 (float)" for t in ticks])
    ax.minorticks_off()
    _finish(ax, xlabel="bits (weights; activations the same, or float)",
            ylabel="robust accuracy (%)", title=title)
    return _save(fig, path)
