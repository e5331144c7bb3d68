"""The first layer of a BNN-WAQ MLP over an L∞ box: which sign patterns of its unstable units
some input realises.

Layer 1 is the only layer that sees the continuous input. Its unit j is +1 iff its folded margin
``m_j = a_j·x − c_j`` is ≥ 0 (:mod:`attacks.integer_bnn`), and every entry of ``a_j`` is ±1
(binary weights times the sign of the BN scale). Over the box ``[lo, hi]`` (the ε-ball ∩
[0, 1]) one margin ranges exactly over an interval; whether several units can take given
signs together is a linear program. Both the exact verifier (:mod:`attacks.milp`) and the
flip-search attack (:mod:`attacks.flipsearch`) decide that here:

* :func:`pair_conflicts`: every pair of signed units that no input realises, in closed form.
  For two constraints ``s_j·m_j ≥ t`` and ``s_l·m_l ≥ t`` over a box, LP duality says they are
  jointly feasible iff ``max_x λ·s_j·m_j + (1 − λ)·s_l·m_l ≥ t`` for every λ ∈ [0, 1]; that
  maximum is piecewise linear in λ with breakpoints where a pixel's coefficient
  ``λ·s_j·a_ji + (1 − λ)·s_l·a_li`` changes sign, and with ±1 weights every breakpoint is
  λ = ½. The minimum is therefore at λ ∈ {0, ½, 1}: each unit alone, or the plain sum of the
  two, whose maximum over the box is two matrix products for all pairs at once.
* :func:`box_steps`: a fast search for an input realising a whole pattern (projected steps on
  the violated margins); it proves nothing when it fails.
* :class:`Reach`: the exact answer, one warm-started HiGHS LP, learning conflicts (irreducible
  infeasible subsets) from unreachable patterns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import highspy
import numpy as np


@dataclass
class Rows:
    """A sparse row-wise linear program under construction."""

    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=lambda: [0])
    index: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)

    def add(self, idx: np.ndarray, val: np.ndarray, lo: float, hi: float) -> None:
        keep = val != 0
        self.index.append(np.asarray(idx)[keep].astype(np.int32))
        self.value.append(np.asarray(val, dtype=np.float64)[keep])
        self.starts.append(self.starts[-1] + int(keep.sum()))
        self.lower.append(lo)
        self.upper.append(hi)


def highs_solver(threads: int, time_limit: float | None, seed: int = 0) -> highspy.Highs:
    """A silent HiGHS instance with these threads, time limit (None: none) and seed."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", int(seed))
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    return h


def pass_model(h: highspy.Highs, col_lo: np.ndarray, col_hi: np.ndarray, rows: Rows,
               integer: np.ndarray | None = None) -> None:
    """Give ``h`` the feasibility problem: columns in ``[col_lo, col_hi]`` (integer where
    ``integer`` says so), the ``rows``, no objective."""
    lp = highspy.HighsLp()
    n = len(col_lo)
    lp.num_col_ = n
    lp.num_row_ = len(rows.lower)
    lp.col_cost_ = np.zeros(n)
    lp.col_lower_ = np.asarray(col_lo, dtype=np.float64)
    lp.col_upper_ = np.asarray(col_hi, dtype=np.float64)
    lp.row_lower_ = np.asarray(rows.lower, dtype=np.float64)
    lp.row_upper_ = np.asarray(rows.upper, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = len(rows.lower)
    lp.a_matrix_.start_ = np.asarray(rows.starts, dtype=np.int32)
    lp.a_matrix_.index_ = (np.concatenate(rows.index) if rows.index
                           else np.zeros(0, np.int32))
    lp.a_matrix_.value_ = (np.concatenate(rows.value) if rows.value else np.zeros(0))
    if integer is not None:
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in integer]
    h.passModel(lp)


class Reach:
    """Which signs of the unstable first-layer units some input in the box realises.

    One warm-started HiGHS LP over the input box whose row bounds encode a (partial) sign
    pattern (0: unconstrained), and the conflicts learned so far: signed subsets of units that
    no input realises, read from the LP's irreducible infeasible subset whenever a pattern is
    unreachable, so that one LP rules out every pattern sharing it. With ``pairs`` every pair
    of signs that no input realises even within the tolerance (:func:`pair_conflicts` with
    margin −tol, so that proofs stay sound) is a conflict from the start, without an LP.
    """

    def __init__(self, a: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 L: np.ndarray, U: np.ndarray, x0: np.ndarray, tol: float, *,
                 pairs: bool = False) -> None:
        self.c, self.tol, self.k = c, tol, len(c)
        self.L, self.U = L, U
        self.lo, self.hi = lo, hi
        self.x0 = x0
        self.a = a
        self.h = highs_solver(1, None)
        self.h.setOptionValue("iis_strategy", 2)  # an IIS from the infeasible LP's rows
        rows = Rows()
        cols = np.arange(len(lo))
        for j in range(self.k):
            rows.add(cols, a[j], -math.inf, math.inf)
        pass_model(self.h, lo, hi, rows)
        self.rows = np.arange(self.k, dtype=np.int32)
        self.conflicts = np.zeros((0, self.k), np.int32)
        self.sizes = np.zeros(0, np.int32)
        self.pairs = (pair_conflicts(a, c, lo, hi, -tol).astype(np.float32) if pairs
                      else None)
        self.lps = 0

    def spread(self) -> np.ndarray:
        """How one-sided each unit's margin range is: 1 when one sign is barely reachable."""
        return np.abs(self.L + self.U) / np.maximum(self.U - self.L, 1e-12)

    def clean_signs(self) -> np.ndarray:
        """The units' signs at the clean input (+1 where the margin is ≥ 0)."""
        return np.where(self.a @ self.x0 - self.c >= 0, 1, -1).astype(np.int8)

    def _solve(self, signs: np.ndarray, margin: float) -> bool:
        s = signs.astype(np.int64)
        lo_r = np.where(s > 0, self.c + margin, -math.inf)
        hi_r = np.where(s < 0, self.c - margin, math.inf)
        self.h.changeRowsBounds(self.k, self.rows, lo_r, hi_r)
        self.h.run()
        self.lps += 1
        return self.h.getModelStatus() == highspy.HighsModelStatus.kOptimal

    def feasible(self, signs: np.ndarray) -> bool:
        """Some input in the box gives these signs, within the float tolerance (0: either).
        An unreachable pattern adds a conflict."""
        if self.k == 0 or not signs.any() or self._solve(signs, -self.tol):
            return True
        status, iis = self.h.getIis()
        rows = np.asarray(list(iis.row_index_), dtype=np.int64) \
            if status == highspy.HighsStatus.kOk and iis.valid_ else np.zeros(0, np.int64)
        rows = rows[signs[rows] != 0] if len(rows) else np.flatnonzero(signs)
        if len(rows) == 0:
            rows = np.flatnonzero(signs)
        conflict = np.zeros((1, self.k), np.int32)
        conflict[0, rows] = signs[rows]
        self.conflicts = np.vstack([self.conflicts, conflict])
        self.sizes = np.append(self.sizes, len(rows)).astype(np.int32)
        return False

    def conflicted(self, patterns: np.ndarray) -> np.ndarray:
        """Rows of ``patterns`` (±1, or 0 for unassigned) that contain a known conflict: a
        learned one, or (with ``pairs``) a pair of signs no input realises."""
        out = np.zeros(len(patterns), bool)
        if len(self.sizes):
            out |= ((patterns.astype(np.int32) @ self.conflicts.T) == self.sizes).any(1)
        if self.pairs is not None and len(patterns):
            out |= holds_conflicting_pair(patterns, self.pairs)
        return out

    def point(self, signs: np.ndarray) -> np.ndarray | None:
        """An input in the box giving these signs with every margin cleared by ``tol`` (so
        that the float32 model computes the same signs), or None."""
        if self.k and not self._solve(signs, +self.tol):
            return None
        x = np.asarray(self.h.getSolution().col_value) if self.k else self.x0.copy()
        return np.clip(x, self.lo, self.hi)


def pair_conflicts(a: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   tol: float) -> np.ndarray:
    """``(2k, 2k)`` bool: literal p and literal q are realised by no input of the box together.

    Literal ``j`` is "unit j is +1" (margin ``a_j·x − c_j ≥ tol``), literal ``k + j`` is "unit j
    is −1" (margin ≤ −tol). ``a`` must have ±1 (or 0) entries: see the module docstring for why
    the plain sum of two constraints then decides the pair exactly.
    """
    k = len(c)
    pos, neg = (a > 0).astype(np.float64), (a < 0).astype(np.float64)
    # s·a_j splits into its +1 pixels P and −1 pixels N; s = +1: (pos, neg), s = −1: (neg, pos)
    parts = ((pos, neg, 1.0), (neg, pos, -1.0))
    out = np.zeros((2 * k, 2 * k), bool)
    for i, (p_i, n_i, s_i) in enumerate(parts):
        for j, (p_j, n_j, s_j) in enumerate(parts):
            # max over the box of (s_i·a_u + s_j·a_v)·x: coefficient +2 where both are +1 (take
            # hi), −2 where both are −1 (take lo), 0 elsewhere
            best = 2.0 * ((p_i * hi) @ p_j.T - (n_i * lo) @ n_j.T)
            need = s_i * c[:, None] + s_j * c[None, :] + 2.0 * tol
            out[i * k:(i + 1) * k, j * k:(j + 1) * k] = best < need
    return out


def holds_conflicting_pair(patterns: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per row of ``patterns`` (±1, or 0 for unassigned; column j is unit j): whether it holds
    two signs that ``pairs`` (a :func:`pair_conflicts` table over the same units, as float32)
    marks as realised by no input together."""
    onehot = np.concatenate([patterns > 0, patterns < 0], axis=1).astype(np.float32)
    return ((onehot @ pairs) * onehot).sum(1) > 0


def box_steps(a: np.ndarray, c: np.ndarray, signs: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              x0: np.ndarray, tol: float, steps: int) -> np.ndarray | None:
    """An input of the box giving every pattern row's signs with margins ≥ 2·tol, or None.

    All rows of ``signs`` (±1, one column per unit) are searched at once from ``x0`` by
    projected steps along the violated margins' directions (step: a tenth of the box's widest
    side); the first row that succeeds is returned. Failing proves nothing (:class:`Reach`
    decides exactly).
    """
    x = np.repeat(x0[None], len(signs), axis=0)
    eta = float((hi - lo).max()) / 10.0
    for _ in range(steps):
        violated = signs * (x @ a.T - c) < 2.0 * tol
        done = ~violated.any(1)
        if done.any():
            return x[int(done.argmax())]
        x = np.clip(x + eta * ((violated * signs) @ a), lo, hi)
    return None
