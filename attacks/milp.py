"""Exact L∞ verification of BNN-WAQ MLPs: a mixed-integer program solved by HiGHS.

Whether some x′ in the ε-box ∩ [0, 1] changes a BNN-WAQ MLP's prediction is a mixed-integer
linear program over the exact integer view of the network (:mod:`attacks.integer_bnn`); this is
the exact problem that IPROP (Khalil, Gupta & Dilkina, ICLR 2019) approximates, and the
optimum against which the PGD++ paper's Fig. 2 (Gupta & Ajanthan, AAAI 2022, appendix) can be
read. Per point the verifier answers ``robust`` (proved: no x′ flips the prediction),
``broken`` (with a counterexample that the float32 torch model confirms) or ``unknown`` (the
time limit ran out first).

The formulation, layer by layer:

* **Inputs** x′ are continuous in ``[max(0, x−ε), min(1, x+ε)]``.
* **Layer 1** unit j is +1 iff its folded margin ``m_j = σ_j·(W_j·x′ − τ_j)`` is ≥ 0. Over
  the box, m_j ranges exactly over ``[L_j, U_j]`` (one linear function of a box). A unit with
  ``L_j ≥ tol`` or ``U_j ≤ −tol`` is fixed; the others get a binary ``b_j`` with big-M rows
  ``b_j = 1 ⇒ m_j ≥ −tol`` and ``b_j = 0 ⇒ m_j ≤ tol``, M from ``L_j, U_j``. The band of width
  ``tol`` (float64 against the model's float32) lets the solver pick either sign where the
  float computation could; proofs are therefore sound, and every counterexample is re-made by
  one LP with the margins cleared by ``tol`` and checked on the torch model.
* **Layers ≥ 2** are integer: unit j is +1 iff ``s_j = A_j·h ≥ T_j`` (h ∈ ±1, ``h = 2b − 1``).
  Units whose bounds on ``s_j`` decide them are fixed and not modelled; the others are binaries
  with ``b′ = 1 ⇒ s_j ≥ T_j`` and ``b′ = 0 ⇒ s_j ≤ T_j − 1`` (exact, since s_j is an integer).
  The bounds come from interval arithmetic, layer by layer.
* **Output**: with ``d_c = (W_c − W_y)·h_L`` (an integer), class c beats the label y iff
  ``d_c ≥ D_c``; the integer threshold D_c is read off torch's own float32 arithmetic on every
  reachable pair of logits, so torch's argmax tie rule (the first maximal index wins) is exact.
  One binary per class that can win selects the class; at least one must be selected.

The MILP alone is slow on the 5 x 100 MLP: at L∞ 0.01 HiGHS decided none of three hard points
in 60 s each. What decides points is a search over the first layer, which is where the input
is continuous. With k unstable first-layer units, the search goes depth-first over the signs
of all but ``leaf_units`` of them, checks each partial pattern for reachability (one
warm-started LP over the box), and at each reachable node pushes all 2^leaf_units completions
through the exact integer network at once. The completions that flip the prediction are tried
one LP each; an unreachable one yields an irreducible infeasible subset of its sign
constraints (a conflict, usually 3 to 9 units), which rules out every other pattern sharing it
without another LP. Before any LP, every pair of signs that no input realises is known in
closed form (:func:`attacks.reach.pair_conflicts`, exact for ±1 weights, taken within the
tolerance so that proofs stay sound) and rules out every node and pattern holding it: on the
5 x 100 MLP at L∞ 0.02 this decided 20 instead of 16 of 25 hard points within 15 s each, in
two thirds of the time. A reachable winning pattern gives a counterexample (one LP with the
margins cleared, checked on the torch model); if none is reachable, the point is proved
robust. Points with more than ``max_search_units`` unstable units go to the MILP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import torch
from torch import nn

from attacks.base import Attack, AttackContext, AttackResult, unwrap
from attacks.integer_bnn import FIRST_LAYER_TOL, IntegerBNN
from attacks.reach import Reach, Rows, highs_solver, pass_model
from attacks.registry import create_attack, register_attack
from results.vocabulary import BNN_WAQ_MLP, Traits

VERDICTS = ("robust", "broken", "unknown")


@dataclass
class PointVerdict:
    """The verifier's answer for one point at one ε."""

    status: str  # robust | broken | unknown
    x: torch.Tensor | None = None  # the counterexample (flattened, float32) when broken
    method: str = ""  # bounds | enumeration | milp | attack
    seconds: float = 0.0
    nodes: int = 0  # branch-and-bound nodes of the MILP
    unstable: int = 0  # unstable first-layer units (k)
    binaries: int = 0  # binary variables of the MILP
    lps: int = 0  # LPs solved (pattern checks and counterexample repairs)
    notes: list[str] = field(default_factory=list)


class BNNVerifier:
    """Exact L∞ robustness of single points of one BNN-WAQ MLP (see the module docstring).

    ``time_limit``: seconds per point and ε (then ``unknown``); ``threads``: HiGHS threads for
    the MILP; ``leaf_units``: units whose 2^leaf_units sign completions are pushed through the
    network at once; ``max_search_units``: the largest k searched, above it the MILP;
    ``use_milp``: whether points with more unstable units go to the MILP (HiGHS may overrun
    a short time limit there: on the 3 x 512 MLP a 2 s limit took 6 s per point) or are left
    undecided at once; ``tol``: the float tolerance of the first layer (see the module
    docstring).
    """

    def __init__(self, model: nn.Module, *, time_limit: float = 15.0, threads: int = 1,
                 leaf_units: int = 14, max_search_units: int = 64, use_milp: bool = True,
                 tol: float = FIRST_LAYER_TOL) -> None:
        self.model = unwrap(model).eval()
        self.ib = IntegerBNN(self.model)
        self.time_limit = time_limit
        self.threads = threads
        self.leaf_units = leaf_units
        self.max_search_units = max_search_units
        self.use_milp = use_milp
        self.tol = tol
        ib = self.ib
        self.a1 = (ib.sigma1[:, None] * ib.W1).numpy()  # (n1, N): ∂m_j/∂x
        self.c1 = (ib.sigma1 * ib.tau1).numpy()  # m_j = a1_j·x − c1_j  (σ ≠ 0)
        self.const1 = ib.const1.numpy().astype(np.int64)  # value of σ = 0 units, else 0
        self.A = [layer.A.numpy().astype(np.int64) for layer in ib.hidden]
        self.T = [layer.T.numpy().astype(np.int64) for layer in ib.hidden]
        self.W_out = ib.W_out.numpy().astype(np.int64)
        self._thresholds: dict[int, np.ndarray] = {}

    # -- the output layer ------------------------------------------------------------------
    def win_thresholds(self, y: int) -> np.ndarray:
        """``D[c]``: class c beats y iff ``(W_c − W_y)·h_L ≥ D[c]`` (``D[y]`` = +inf).

        Read off torch's float32 ``k + b`` on every reachable pair of integer logits, so ties
        are resolved exactly as ``argmax`` does (the first maximal index). A class for which
        the reachable pairs disagree at one difference gets the smallest difference at which
        any pair wins (the sound choice for proofs; counterexamples are checked anyway).
        """
        if y in self._thresholds:
            return self._thresholds[y]
        n_last = self.W_out.shape[1]
        ks = torch.arange(-n_last, n_last + 1, 2, dtype=torch.float32)
        b = self.ib.b_out
        out = np.full(len(b), np.inf)
        zy = ks + b[y]
        for c in range(len(b)):
            if c == y:
                continue
            # the difference d = k_c − k_y is even (same parity); search around −Δb
            guess = -(float(b[c]) - float(b[y]))
            lo = 2 * math.floor(guess / 2) - 4
            for d in range(lo, lo + 10):
                zc = ks + d + b[c]
                ok = (ks + d).abs() <= n_last
                wins = (zc > zy) | ((zc == zy) & (c < y))
                if bool(wins[ok].any()):
                    out[c] = d
                    break
            else:  # pragma: no cover - |Δb| is far from every integer: plain comparison
                out[c] = math.ceil(guess + 1e-9)
        self._thresholds[y] = out
        return out

    # -- bounds ----------------------------------------------------------------------------
    def first_layer_bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact range ``[L, U]`` of every first-layer margin over the box (±inf: constant)."""
        a = self.a1
        U = np.where(a > 0, a * hi, a * lo).sum(1) - self.c1
        L = np.where(a > 0, a * lo, a * hi).sum(1) - self.c1
        const = self.const1
        U = np.where(const > 0, np.inf, np.where(const < 0, -np.inf, U))
        L = np.where(const > 0, np.inf, np.where(const < 0, -np.inf, L))
        return L, U

    # -- the decision ----------------------------------------------------------------------
    def verify(self, x0: torch.Tensor, y: int, eps: float, *, method: str = "auto",
               write_model: str | None = None) -> PointVerdict:
        """Decide one point: is every x′ with ‖x′ − x0‖∞ ≤ ε in [0, 1] classified as ``y``?

        ``method``: ``auto`` (the pattern search, or the MILP where k exceeds
        ``max_search_units``), ``search`` or ``milp`` (for measuring one against the other).
        ``write_model``: a file (``.mps``, ``.lp``) to write the MILP to before it is solved,
        for other solvers.
        """
        t0 = time.perf_counter()
        x = x0.reshape(-1).detach().cpu().to(torch.float32)
        box = (torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0))
        lo, hi = box[0].double().numpy(), box[1].double().numpy()
        L, U = self.first_layer_bounds(lo, hi)
        tol = self.tol
        fixed = np.where(tol <= L, 1, np.where(-tol >= U, -1, 0)).astype(np.int8)
        free = np.flatnonzero(fixed == 0)
        v = PointVerdict("unknown", unstable=len(free))
        reach = Reach(self.a1[free], self.c1[free], lo, hi, L[free], U[free],
                      x.double().numpy(), tol, pairs=True)
        deadline = t0 + self.time_limit
        if method == "search" or (method == "auto" and len(free) <= self.max_search_units):
            self._search(v, reach, fixed, free, y, box, deadline)
        elif method == "milp" or self.use_milp:
            self._milp(v, reach, L, U, fixed, free, y, box, deadline, write_model)
        else:
            v.method = "skipped"
            v.notes.append(f"{len(free)} unstable first-layer units: more than the search "
                           f"takes ({self.max_search_units}) and the MILP is off")
        v.lps = reach.lps
        v.seconds = time.perf_counter() - t0
        return v

    def confirm(self, x: np.ndarray | None, y: int, box: tuple[torch.Tensor, torch.Tensor]
                 ) -> torch.Tensor | None:
        """``x`` as a float32 input (clipped to the float32 box) if the torch model predicts
        another class than y."""
        if x is None:
            return None
        xt = torch.minimum(torch.maximum(torch.from_numpy(x).to(torch.float32), box[0]),
                           box[1])[None]
        p = next(self.model.parameters())
        with torch.no_grad():
            pred = int(self.model(xt.to(p.device)).argmax(1).item())
        return xt[0] if pred != y else None

    def _search(self, v: PointVerdict, reach: Reach, fixed: np.ndarray, free: np.ndarray, y: int,
                box: tuple[torch.Tensor, torch.Tensor], deadline: float) -> None:
        """Depth-first over the signs of the unstable first-layer units that are not leaf units
        (each partial pattern checked for reachability), then all completions of the leaf
        units at once through the integer network; the winning completions are tried one LP
        each, every unreachable one teaching ``reach`` a conflict that rules out the others
        sharing it."""
        v.method = "search"
        k = len(free)
        L_range = reach.spread()
        # branch first on the units whose rare sign is least likely: most lopsided ranges
        order = np.argsort(-L_range, kind="stable")
        n_branch = max(0, k - self.leaf_units)
        branch, leaves = order[:n_branch], order[n_branch:]
        r = len(leaves)
        bits = ((np.arange(2**r)[:, None] >> np.arange(r)[None, :]) & 1).astype(np.int8)
        completions = 2 * bits - 1  # (2^r, r)
        clean = reach.clean_signs()
        ambiguous = False
        stack = [np.zeros(k, np.int8)]
        while stack:
            if time.perf_counter() > deadline:
                v.notes.append("time limit")
                return
            node = stack.pop()
            depth = int((node[branch] != 0).sum()) if n_branch else 0
            if reach.conflicted(node[None])[0] or not reach.feasible(node):
                continue
            if depth < n_branch:
                j = branch[depth]
                for s in (-clean[j], clean[j]):  # the clean sign is explored first (LIFO)
                    child = node.copy()
                    child[j] = s
                    stack.append(child)
                continue
            signs = np.repeat(node[None], len(completions), axis=0)
            signs[:, leaves] = completions
            h1 = np.repeat(fixed[None], len(signs), axis=0)
            h1[:, free] = signs
            h1 = torch.from_numpy(h1)
            last = (self.ib.forward_from(1, h1) or [h1])[-1]
            logits = self.ib.logits_from_hidden(last)
            winners = signs[(logits.argmax(1) != y).numpy()]
            winners = winners[np.argsort((winners != clean).sum(1), kind="stable")]
            alive = ~reach.conflicted(winners)
            while alive.any():
                if time.perf_counter() > deadline:
                    v.notes.append("time limit")
                    return
                w = winners[np.flatnonzero(alive)[0]]
                if not reach.feasible(w):
                    alive &= ~reach.conflicted(winners)
                    continue
                found = self.confirm(reach.point(w), y, box)
                if found is not None:
                    v.status, v.x = "broken", found
                    return
                ambiguous = True  # reachable only within the float tolerance
                alive &= ~(winners == w).all(1)
        if ambiguous:
            v.notes.append("a winning pattern is reachable only within the float tolerance")
        else:
            v.status = "robust"

    def _milp(self, v: PointVerdict, reach: Reach, L: np.ndarray, U: np.ndarray,
              fixed: np.ndarray, free: np.ndarray, y: int,
              box: tuple[torch.Tensor, torch.Tensor], deadline: float,
              write_model: str | None = None) -> None:
        """Build and solve the big-M MILP of the module docstring (interval bounds). A solver
        solution's first-layer signs are turned into an input by one LP and checked on the
        torch model; a rejected pattern is excluded and the MILP solved again (3 rounds)."""
        v.method = "milp"
        lo, hi = reach.lo, reach.hi
        N = len(lo)
        tol = self.tol
        col_lo, col_hi, integer = list(lo), list(hi), [False] * N
        rows = Rows()

        def new_binary() -> int:
            col_lo.append(0.0)
            col_hi.append(1.0)
            integer.append(True)
            return len(col_lo) - 1

        cols_x = np.arange(N)
        free_cols = np.array([new_binary() for _ in free], dtype=np.int64)
        for j, b in zip(free.tolist(), free_cols.tolist(), strict=True):
            idx = np.append(cols_x, b)
            # b = 1 ⇒ m ≥ −tol;  b = 0 ⇒ m ≤ tol   (m = a·x − c)
            rows.add(idx, np.append(self.a1[j], tol + L[j]), L[j] + self.c1[j], math.inf)
            rows.add(idx, np.append(self.a1[j], -(U[j] - tol)), -math.inf, tol + self.c1[j])
        # each unit is a constant (±1) or a binary column b (h = 2b − 1)
        value = fixed.astype(np.int64)
        cols = np.full(len(value), -1)
        cols[free] = free_cols
        for A, T in zip(self.A, self.T, strict=True):
            known = cols < 0
            const = A[:, known] @ value[known] - A[:, ~known].sum(1)
            twoA = 2 * A[:, ~known]
            Ls = const + np.minimum(twoA, 0).sum(1)
            Us = const + np.maximum(twoA, 0).sum(1)
            nxt_value = np.where(Ls >= T, 1, np.where(Us <= T - 1, -1, 0))
            nxt_cols = np.full(len(T), -1)
            in_cols = cols[~known]
            for j in np.flatnonzero(nxt_value == 0).tolist():
                b = nxt_cols[j] = new_binary()
                idx = np.append(in_cols, b)
                # b′ = 1 ⇒ s ≥ T;  b′ = 0 ⇒ s ≤ T − 1   (s = 2·A·b + const)
                rows.add(idx, np.append(twoA[j], Ls[j] - T[j]), Ls[j] - const[j], math.inf)
                rows.add(idx, np.append(twoA[j], -(Us[j] - T[j] + 1)), -math.inf,
                         T[j] - 1 - const[j])
            value, cols = nxt_value.astype(np.int64), nxt_cols
        known = cols < 0
        D = self.win_thresholds(y)
        select = []
        for c in range(len(D)):
            if c == y:
                continue
            w = self.W_out[c] - self.W_out[y]
            e = w[known] @ value[known] - w[~known].sum()
            two_w = 2 * w[~known]
            Ld, Ud = e + np.minimum(two_w, 0).sum(), e + np.maximum(two_w, 0).sum()
            if Ud < D[c]:
                continue  # class c cannot win
            q = new_binary()
            select.append(q)
            # q = 1 ⇒ d ≥ D  (d = 2·w·b + e)
            rows.add(np.append(cols[~known], q), np.append(two_w, -(D[c] - Ld)),
                     Ld - e, math.inf)
        v.binaries = sum(integer)
        if not select:
            v.status, v.method = "robust", "bounds"
            return
        rows.add(np.asarray(select), np.ones(len(select)), 1.0, math.inf)
        for _ in range(3):
            left = deadline - time.perf_counter()
            if left <= 0:
                v.notes.append("time limit")
                return
            h = highs_solver(self.threads, left)
            h.setOptionValue("mip_heuristic_effort", 0.0)  # proofs, not incumbents, cost time
            pass_model(h, np.array(col_lo), np.array(col_hi), rows, np.array(integer))
            if write_model is not None:
                h.writeModel(str(write_model))
                write_model = None
            h.run()
            v.nodes += int(h.getInfo().mip_node_count)
            status = h.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                v.status = "robust"
                return
            if status != highspy.HighsModelStatus.kOptimal:
                v.notes.append("time limit")
                return
            bits = np.round(np.asarray(h.getSolution().col_value)[free_cols]).astype(np.int64)
            signs = (2 * bits - 1).astype(np.int8)
            found = self.confirm(reach.point(signs), y, box)
            if found is not None:
                v.status, v.x = "broken", found
                return
            # exclude this first-layer pattern: Σ_{bit=1} (1 − b) + Σ_{bit=0} b ≥ 1
            rows.add(free_cols, np.where(bits == 1, -1.0, 1.0), 1.0 - bits.sum(), math.inf)
        v.notes.append("three solver counterexamples were rejected by the float model")


class MILPLinf(Attack):
    """The exact L∞ verifier as an attack: its candidates are the counterexamples.

    Attack first, solve the rest: the ``presolve`` attacks (cheap gradient attacks and flip
    search, run inside this cell so that its key determines its result) break what they can;
    the verifier (:class:`BNNVerifier`) decides only the points they leave standing. Every
    attacked point gets a verdict in ``per_point["verdicts"]``: ``broken`` (a counterexample,
    from a presolve attack or the verifier), ``robust`` (proved: no input in the ε-ball ∩
    [0, 1] changes the prediction) or ``unknown`` (the per-point ``time_limit`` ran out). A
    cell's robust accuracy is therefore an upper bound on the exact one, equal to it when no
    point is unknown; the number proved robust is the matching lower bound. Runs on BNN-WAQ
    MLPs only.
    """

    norm = "linf"
    uses_gradients = True  # the presolve attacks
    #: 2: flip search joins the presolve attacks, and the search rules out every pair of
    #: first-layer signs that no input realises before any LP (same verdicts, fewer unknowns)
    version = 2
    libraries = ("highspy",)

    def __init__(self, *, time_limit: float = 15.0, threads: int = 1, leaf_units: int = 14,
                 max_search_units: int = 64, use_milp: bool = True,
                 presolve: tuple[str, ...] = ("pgd-linf", "pgd-linf-njs", "pgd-linf-hns",
                                              "flip-search-linf")
                 ) -> None:
        self.time_limit = time_limit
        self.threads = threads
        self.leaf_units = leaf_units
        self.max_search_units = max_search_units
        self.use_milp = use_milp
        self.presolve = tuple(presolve)
        self._presolvers: list[Attack] | None = None

    def setup(self, model: nn.Module, context: AttackContext) -> None:
        """The presolve attacks, each set up on ``model`` as the benchmark sets up attacks."""
        self._presolvers = [create_attack(name) for name in self.presolve]
        for attack in self._presolvers:
            attack.setup(model, context)

    def _hyperparameters(self) -> dict:
        # ``use_milp`` joined the options after the first records; with its default (True) the
        # behaviour is the recorded one, so it enters the configuration (and the key) only
        # when it is switched off
        out = super()._hyperparameters()
        if out.get("use_milp") is True:
            del out["use_milp"]
        # the presolve attacks decide which points the verifier never sees: their whole
        # configurations (versions included) are part of this attack's
        out["presolve"] = {name: create_attack(name).config() for name in self.presolve}
        return out

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        verifier = BNNVerifier(model, time_limit=self.time_limit, threads=self.threads,
                               leaf_units=self.leaf_units,
                               max_search_units=self.max_search_units,
                               use_milp=self.use_milp)
        x_adv = x.clone()
        broken = torch.zeros(len(x), dtype=torch.bool)
        lo, hi = torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)
        presolvers = self._presolvers or [create_attack(name) for name in self.presolve]
        for attack in presolvers:
            todo = (~broken).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            cand = attack(model, x[todo], y[todo], eps=eps, generator=generator).x_adv
            cand = torch.minimum(torch.maximum(cand, lo[todo]), hi[todo])
            with torch.no_grad():
                hit = (model(cand).argmax(1) != y[todo]).cpu()
            x_adv[todo[hit]] = cand[hit]
            broken[todo[hit]] = True
        presolved = int(broken.sum())
        verdicts = ["broken" if b else "" for b in broken.tolist()]
        times, nodes, lps, methods = [], 0, 0, {}
        for i in (~broken).nonzero().squeeze(1).tolist():
            v = verifier.verify(x[i], int(y[i]), eps)
            verdicts[i] = v.status
            times.append(v.seconds)
            nodes += v.nodes
            lps += v.lps
            methods[v.method] = methods.get(v.method, 0) + 1
            if v.status == "broken":
                x_adv[i] = v.x.reshape(x[i].shape).to(x.device, x.dtype)
        q = np.quantile(times, [0.5, 0.9]) if times else [0.0, 0.0]
        info = {
            "proved": verdicts.count("robust"),
            "broken": verdicts.count("broken"),
            "unknown": verdicts.count("unknown"),
            "broken_by_presolve": presolved,
            "solved": len(times),
            "solve_seconds_median": float(q[0]),
            "solve_seconds_p90": float(q[1]),
            "solve_seconds_max": float(max(times, default=0.0)),
            "solver_nodes": nodes,
            "solver_lps": lps,
            "decided_by": methods,
        }
        return AttackResult(x_adv, info, per_point={"verdicts": verdicts})


register_attack(
    "milp-linf", MILPLinf,
    traits=Traits("exact", "milp-linf", applies_to=BNN_WAQ_MLP),
    description="exact L∞ verifier for BNN-WAQ MLPs (HiGHS): PGD/PGD++ first, then every "
    "standing point proved robust, broken by a counterexample, or unknown at the time limit",
)


__all__ = ["VERDICTS", "BNNVerifier", "MILPLinf", "PointVerdict"]
