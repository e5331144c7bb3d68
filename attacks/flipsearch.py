"""Flip search: an L∞ attack on BNN-WAQ MLPs that searches the first layer's sign flips.

Why. In a BNN-WAQ MLP only the first layer sees the continuous input; every later layer is an
integer function of the first layer's signs (:mod:`attacks.integer_bnn`). A gradient, straight-
through or temperature-scaled (PGD++, Gupta & Ajanthan, AAAI 2022, Sec. 4), is therefore a poor
guide to *which* first-layer units to flip, and the exact verifier (:mod:`attacks.milp`) shows
every gradient attack missing most breakable points at small ε. This attack searches the flips
themselves, the way the verifier does, but without the obligation to prove anything:

1. **Unstable units.** Over the box ``[max(0, x − ε), min(1, x + ε)]`` each first-layer margin
   ranges exactly over an interval (interval arithmetic is exact for one linear function); the
   units whose interval contains 0 (within the float tolerance) are the k that can flip.
2. **Pairs that cannot flip together** are known in closed form before any search
   (:func:`attacks.reach.pair_conflicts`): with ±1 weights, two sign constraints are jointly
   reachable iff their plain sum is.
3. **Depth-first search over sign patterns**, as the verifier's: the k units are split into the
   ``leaf_units`` with the most balanced margin ranges (the easiest to flip either way) and the
   branch units. The search descends over the branch units' signs, the clean sign first,
   skipping any sign that conflicts with one already chosen; at each reached leaf all
   completions of the leaf units that are pairwise compatible go through the exact integer
   network at once. Its cost is bounded: at most ``max_leaves`` leaves per point, and fewer
   leaf units on wide networks (at most ``leaf_macs`` multiply-adds per leaf).
4. **Winning patterns** (the integer network predicts another class), fewest flips first, are
   made into inputs: by projected steps on the violated margins (:func:`attacks.reach.box_steps`,
   a few hundred vector operations), then, for at most ``max_lps`` patterns per point, by one
   LP each (:class:`attacks.reach.Reach`), whose infeasible subsets rule out other patterns.
   An input is kept only if the float32 torch model misclassifies it (and the benchmark checks
   it again, like every attack's).

The search is deterministic (the seed plays no part). Its work is counted in the cell's
``info``: integer patterns evaluated, leaves, LPs, and how each example was made.

On the exact-verification suite (``mnist5k-oracle``, L∞ 0.01 and 0.02) it finds about nine in
ten of the points the verifier breaks or more, in a few percent of the verifier's time; on the
larger boards it contributes what gradients miss (see the attacks page). Applies to BNN-WAQ
MLPs (:data:`attacks.integer_bnn.SUPPORTED`); the convnet's first layer is a convolution
followed by max-pooling, whose integer view this module does not build.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from attacks.base import Attack, AttackResult
from attacks.integer_bnn import FIRST_LAYER_TOL
from attacks.milp import BNNVerifier
from attacks.reach import Reach, box_steps, holds_conflicting_pair, pair_conflicts
from attacks.registry import register_attack
from results.vocabulary import BNN_WAQ_MLP, Traits


class IntegerTail:
    """Layers 2..L and the output of a BNN-WAQ MLP, in float32 numpy (every value is an
    integer below 2^24, so the arithmetic is exact), for many first-layer patterns at once.
    Rows that reach a layer with the same signs are evaluated once."""

    def __init__(self, verifier: BNNVerifier) -> None:
        self.A = [a.astype(np.float32) for a in verifier.A]
        self.AT = [a.T.copy() for a in self.A]
        self.T = [t.astype(np.float32) for t in verifier.T]
        self.W_outT = verifier.W_out.astype(np.float32).T.copy()
        self.b_out = verifier.ib.b_out.numpy().astype(np.float32)
        widths = verifier.ib.widths
        #: multiply-adds to push one first-layer pattern to the logits
        self.macs = sum(i * o for i, o in zip(widths, widths[1:], strict=False)) \
            + widths[-1] * len(self.b_out)

    def logits(self, layer2: np.ndarray) -> np.ndarray:
        """Float32 logits from layer 2's pre-activations ``A_2·h_1`` (one row per pattern).

        The output layer adds the float32 bias exactly as the model does, so ``argmax`` ties
        resolve as in torch."""
        one, minus = np.float32(1), np.float32(-1)
        # with one hidden layer ``layer2`` is h_1 itself
        h = np.where(layer2 >= self.T[0], one, minus) if self.A else layer2
        back = np.arange(len(h))
        for AT, T in zip(self.AT[1:], self.T[1:], strict=True):
            h, inverse = _unique_rows(h)
            back = inverse[back]
            h = np.where(h @ AT >= T, one, minus)
        return (h @ self.W_outT + self.b_out)[back]


def _unique_rows(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ±1 rows of ``h`` and, per row, the index of its distinct row."""
    packed = np.ascontiguousarray(np.packbits(h > 0, axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return h[first], inverse.ravel()


@functools.cache
def _completions(r: int) -> np.ndarray:
    """All 2^r sign vectors of length r (float32 ±1; do not write into it)."""
    bits = (np.arange(2**r)[:, None] >> np.arange(r)[None, :]) & 1
    return (2 * bits - 1).astype(np.float32)


@dataclass
class _Work:
    """What the search spent on one batch (summed over its points)."""

    patterns: int = 0
    checks: int = 0  # inputs checked on the torch model
    leaves: int = 0
    lps: int = 0
    by_steps: int = 0
    by_lp: int = 0
    unstable: list[int] = field(default_factory=list)


class FlipSearchLinf(Attack):
    """Search the first layer's sign flips of a BNN-WAQ MLP (see the module docstring).

    ``leaf_units``: units whose sign completions are evaluated together at each leaf (at most
    2^leaf_units patterns); ``leaf_macs``: the most multiply-adds one leaf may cost (fewer leaf
    units on wide networks); ``max_leaves``: leaves visited per point; ``max_lps``: LPs per point
    for winning patterns that the projected steps do not realise; ``batch``: winning patterns
    tried by projected steps at once; ``steps``: projected steps per batch.
    """

    norm = "linf"
    uses_gradients = False
    version = 1
    libraries = ("highspy",)

    def __init__(self, *, leaf_units: int = 14, leaf_macs: int = 2**30, max_leaves: int = 64,
                 max_lps: int = 5, batch: int = 8, steps: int = 200) -> None:
        if not (1 <= leaf_units <= 20 and max_leaves >= 1 and max_lps >= 0 and batch >= 1
                and steps >= 1 and leaf_macs >= 1):
            raise ValueError("flip search needs 1 ≤ leaf_units ≤ 20, max_leaves ≥ 1, "
                             "max_lps ≥ 0, batch ≥ 1, steps ≥ 1 and leaf_macs ≥ 1")
        self.leaf_units = int(leaf_units)
        self.leaf_macs = int(leaf_macs)
        self.max_leaves = int(max_leaves)
        self.max_lps = int(max_lps)
        self.batch = int(batch)
        self.steps = int(steps)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        verifier = BNNVerifier(model)  # the integer view (raises on other models)
        # numpy's BLAS gets the threads torch has (one per process under ``--jobs``), not one
        # per core in every process
        with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
            result = self._run(verifier, x, y, eps)
        # cost unit, as IPROP's: forward passes of the exact integer network (one per
        # first-layer pattern it scored) plus the torch model's checks of made inputs
        count = getattr(model, "count_forwards", None)
        if callable(count):
            count(result.info["integer_patterns"] + result.info["model_checks"])
        return result

    def _run(self, verifier: BNNVerifier, x: torch.Tensor, y: torch.Tensor,
             eps: float) -> AttackResult:
        tail = IntegerTail(verifier)
        work = _Work()
        x_adv = x.clone()
        found = 0
        flat = x.reshape(len(x), -1).detach().cpu().to(torch.float32)
        lo, hi = torch.clamp(flat - eps, min=0.0), torch.clamp(flat + eps, max=1.0)
        L, U = first_layer_ranges(verifier, lo.double().numpy(), hi.double().numpy())
        for i in range(len(x)):
            hit = self._point(verifier, tail, (lo[i], hi[i]), flat[i], L[i], U[i], int(y[i]),
                              work)
            if hit is not None:
                x_adv[i] = hit.reshape(x[i].shape).to(x.device, x.dtype)
                found += 1
        n = max(len(x), 1)
        info: dict[str, Any] = {
            "claimed_success": found,
            "integer_patterns": work.patterns,
            "model_checks": work.checks,
            "patterns_per_sample": work.patterns / n,
            "leaves_per_sample": work.leaves / n,
            "lps": work.lps,
            "made_by_steps": work.by_steps,
            "made_by_lp": work.by_lp,
            "unstable_median": float(np.median(work.unstable)) if work.unstable else 0.0,
            "calibrated_thresholds": verifier.ib.calibrated,
        }
        return AttackResult(x_adv, info)

    # ------------------------------------------------------------------------------------
    def _point(self, verifier: BNNVerifier, tail: IntegerTail,
               box: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, L: np.ndarray,
               U: np.ndarray, y: int, work: _Work) -> torch.Tensor | None:
        """A confirmed adversarial input for one point (flattened, float32, its box and its
        first-layer margin ranges given), or None."""
        tol = FIRST_LAYER_TOL
        lo, hi = box[0].double().numpy(), box[1].double().numpy()
        fixed = np.where(tol <= L, 1, np.where(-tol >= U, -1, 0)).astype(np.float32)
        free = np.flatnonzero(fixed == 0)
        k = len(free)
        work.unstable.append(k)
        if k == 0:
            return None
        search = _PointSearch(self, verifier, tail, fixed, free, L, U, lo, hi,
                              x.double().numpy(), y, box, work)
        return search.run()


def first_layer_ranges(verifier: BNNVerifier, lo: np.ndarray, hi: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``[L, U]`` of every first-layer margin over each row's box (rows of ``lo``/``hi``), as
    :meth:`attacks.milp.BNNVerifier.first_layer_bounds` gives for one box, for all at once."""
    pos, neg = (verifier.a1 > 0).astype(np.float64), (verifier.a1 < 0).astype(np.float64)
    U = hi @ pos.T - lo @ neg.T - verifier.c1
    L = lo @ pos.T - hi @ neg.T - verifier.c1
    const = verifier.const1[None, :]
    U = np.where(const > 0, np.inf, np.where(const < 0, -np.inf, U))
    L = np.where(const > 0, np.inf, np.where(const < 0, -np.inf, L))
    return L, U


class _PointSearch:
    """The depth-first search of one point (steps 2-4 of the module docstring)."""

    def __init__(self, attack: FlipSearchLinf, verifier: BNNVerifier, tail: IntegerTail,
                 fixed: np.ndarray, free: np.ndarray, L: np.ndarray, U: np.ndarray,
                 lo: np.ndarray, hi: np.ndarray, x0: np.ndarray, y: int,
                 box: tuple[torch.Tensor, torch.Tensor], work: _Work) -> None:
        self.attack, self.verifier, self.tail, self.work = attack, verifier, tail, work
        self.L, self.U, self.lo, self.hi, self.x0 = L[free], U[free], lo, hi, x0
        self.y, self.box = y, box
        self.k = k = len(free)
        self.a, self.c = verifier.a1[free], verifier.c1[free]
        self.clean = np.where(self.a @ x0 - self.c >= 0, 1, -1).astype(np.float32)
        base = fixed.copy()
        base[free] = 0
        if tail.A:
            self.layer2_fixed = tail.A[0] @ base
            self.A2 = tail.A[0][:, free]
        else:  # one hidden layer: the "layer 2 input" is h_1 itself
            self.layer2_fixed = base
            self.A2 = np.zeros((len(base), k), np.float32)
            self.A2[free, np.arange(k)] = 1
        self.conflicts = pair_conflicts(self.a, self.c, lo, hi, FIRST_LAYER_TOL)
        r = min(attack.leaf_units, k,
                max(1, int(math.floor(math.log2(max(attack.leaf_macs / tail.macs, 2))))))
        spread = np.abs(self.L + self.U) / np.maximum(self.U - self.L, 1e-12)
        order = np.argsort(-spread, kind="stable")  # most lopsided first
        self.branch, self.leaves = order[:k - r], order[k - r:]
        self.reach: Reach | None = None
        self.tried: set[bytes] = set()

    def run(self) -> torch.Tensor | None:
        k, clean, conflicts = self.k, self.clean, self.conflicts
        literal = np.where(clean > 0, np.arange(k), k + np.arange(k))  # clean literals
        flipped = np.where(clean > 0, k + np.arange(k), np.arange(k))
        # stack entries: (depth, pattern, literals banned by the choices so far)
        stack = [(0, clean.copy(), np.zeros(2 * k, bool))]
        leaves, found = 0, None
        while found is None and stack and leaves < self.attack.max_leaves:
            depth, pattern, banned = stack.pop()
            if depth < len(self.branch):
                j = self.branch[depth]
                for lit, sign in ((flipped[j], -clean[j]), (literal[j], clean[j])):
                    if banned[lit]:  # the clean sign is pushed last, hence explored first
                        continue
                    child = pattern.copy()
                    child[j] = sign
                    stack.append((depth + 1, child, banned | conflicts[lit]))
                continue
            leaves += 1
            found = self._leaf(pattern, banned)
        self.work.leaves += leaves
        self.work.lps += self.reach.lps if self.reach is not None else 0
        return found

    def _leaf(self, pattern: np.ndarray, banned: np.ndarray) -> torch.Tensor | None:
        """Every pairwise-compatible completion of the leaf units under ``pattern``."""
        k, leaves = self.k, self.leaves
        plus_banned, minus_banned = banned[leaves], banned[k + leaves]
        if (plus_banned & minus_banned).any():
            return None
        forced = np.where(plus_banned, -1, np.where(minus_banned, 1, 0)).astype(np.float32)
        pattern = pattern.copy()
        pattern[leaves] = np.where(forced != 0, forced, self.clean[leaves])
        open_units = leaves[forced == 0]
        E = _completions(len(open_units))
        if len(open_units):
            lits = np.concatenate([open_units, k + open_units])
            pairs = self.conflicts[np.ix_(lits, lits)].astype(np.float32)
            E = E[~holds_conflicting_pair(E, pairs)]
        layer2 = self.layer2_fixed + self.A2 @ pattern
        if len(open_units):
            layer2 = layer2[None] + (E - pattern[open_units][None]) @ self.A2[:, open_units].T
        else:
            layer2 = layer2[None]
        self.work.patterns += len(layer2)
        z = self.tail.logits(layer2)
        win = z.argmax(1) != self.y
        if not win.any():
            return None
        winners = np.repeat(pattern[None], int(win.sum()), axis=0)
        if len(open_units):
            winners[:, open_units] = E[win]
        zw = z[win]
        margin = zw[:, self.y] - np.delete(zw, self.y, axis=1).max(1)
        flips = (winners != self.clean).sum(1)
        return self._realise(winners[np.lexsort((margin, flips))])

    def _realise(self, winners: np.ndarray) -> torch.Tensor | None:
        """The first winning pattern that an input of the box realises, as a confirmed
        adversarial input: projected steps on batches of patterns, then LPs."""
        attack, work = self.attack, self.work
        fresh = [w for w in winners if w.tobytes() not in self.tried]
        for start in range(0, len(fresh), attack.batch):
            chunk = np.array(fresh[start:start + attack.batch])
            self.tried.update(w.tobytes() for w in chunk)
            if self.reach is not None and len(self.reach.sizes):
                chunk = chunk[~self.reach.conflicted(chunk.astype(np.int8))]
                if len(chunk) == 0:
                    continue
            x = box_steps(self.a, self.c, chunk.astype(np.float64), self.lo, self.hi, self.x0,
                          FIRST_LAYER_TOL, attack.steps)
            work.checks += x is not None
            found = self.verifier.confirm(x, self.y, self.box)
            if found is not None:
                work.by_steps += 1
                return found
            for w in chunk.astype(np.int8):
                spent = self.reach.lps if self.reach is not None else 0
                if spent >= attack.max_lps:  # no LPs left: projected steps only
                    break
                if self.reach is None:
                    self.reach = Reach(self.a, self.c, self.lo, self.hi, self.L, self.U,
                                       self.x0, FIRST_LAYER_TOL)
                if self.reach.conflicted(w[None])[0]:
                    continue
                if self.reach.feasible(w):
                    point = self.reach.point(w)
                    work.checks += point is not None
                    found = self.verifier.confirm(point, self.y, self.box)
                    if found is not None:
                        work.by_lp += 1
                        return found
        return None


register_attack(
    "flip-search-linf", FlipSearchLinf,
    traits=Traits("combinatorial", "flip-search-linf", uses_gradients=False,
                  applies_to=BNN_WAQ_MLP),
    description="flip search on BNN-WAQ MLPs, L∞, no gradients: depth-first over the first "
    "layer's sign flips (pairwise-reachable only), every completion of the 14 most balanced "
    "units through the exact integer network, winners realised by projected steps or one LP",
)

__all__ = ["FlipSearchLinf", "IntegerTail"]
