"""IPROP without a MILP solver: a combinatorial L∞ attack on BNN-WAQ MLPs.

After Khalil, Gupta and Dilkina (ICLR 2019), compared with PGD++ in the appendix (Fig. 2) of
Gupta & Ajanthan (AAAI 2022); the original solves small MILPs layer by layer, this version
uses exact integer arithmetic and greedy / sorting steps instead. The
attack works on the exact integer network (:mod:`attacks.integer_bnn`) and never uses a
gradient. One round, for every sample still standing (all samples of a batch at once, and
``candidates`` independent tries per sample, which differ by random tie-breaking):

1. **Last hidden layer.** With target class t and label y, ``z_t − z_y = c·h_L + const`` with
   ``c = W_out[t] − W_out[y]``; flipping unit j changes it by ``−2·c_j·h_j``. Take the ``S``
   largest positive changes (exact top-S by sorting; ties go to the units closest to their
   threshold, then at random). Target: those S units flipped and the units with
   ``c_j·h_j > 0`` kept (weight 1 each: exactly the objective); the other units are free.
2. **Target propagation.** For l = L … 2, choose flips of layer l−1 that make the most
   (weighted) units of layer l reach their targets. A flip of a ±1 input moves every integer
   margin of layer l by exactly ±2, so the change of the weighted count for *all* candidate
   flips is one matrix product; the greedy takes the best flip (count first, then progress of
   the unmet margins), at most ``layer_flips`` times (default 2·S + 2). The new layer l−1 is
   the next target: its flipped units weigh 1, a kept unit ``keep_weight`` × what its
   deviation would cost layer l. The default ``keep_weight = 0`` propagates the flip set
   alone: on the zoo's MLPs protecting kept units made the chain stall (each flip disturbs
   many near-threshold units), while the exact forward check of step 4 filters side effects.
3. **Input layer.** Choose x′ in the box ``[max(0, x−ε), min(1, x+ε)]`` for the layer-1
   targets: maximise ``Σ_j α_j u_j σ_j W_1j·x′`` coordinate-wise, α = weights of the unmet
   units, every moved coordinate going to the bound its coefficient points to. Moving the top
   fraction of coordinates (by benefit) is tried for a few fractions (coordinates with no
   benefit stay where they are); ``input_rounds`` rounds, α growing on units still unmet.
4. **Forward** the candidates through the exact network; keep the best if ``z_t − z_y`` grew.
   S adapts: never more than the flips still needed, × ``grow`` after a success, halved after
   a failure; after ``patience`` failures at S = 1 (or ``rounds_per_target`` rounds) the sample
   moves on to the next target class (runner-up first, restarting from the clean input); it
   stops on a flip or when its budget of ``rounds`` is spent.

Success means the prediction differs from ``y`` (for the flip-rate protocol, ``y`` is the
clean prediction). Every returned input lies in the ε-box and [0, 1]. Small tensors and many
operations: on a busy CPU, ``torch.set_num_threads(1)`` is much faster.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, AttackResult
from attacks.integer_bnn import FIRST_LAYER_TOL, IntegerBNN
from attacks.registry import register_attack
from results.vocabulary import BNN_WAQ_MLP, Traits


def last_layer_flips(h: torch.Tensor, c: torch.Tensor, S: torch.Tensor | int,
                     cost: torch.Tensor | None = None) -> torch.Tensor:
    """The best ≤ S flips of the last hidden layer for the objective ``c·h`` (exact).

    ``h`` (B, n) ±1, ``c`` (B, n) real, ``S`` an int or a (B,) tensor. Flipping unit j changes
    ``c·h`` by ``−2·c_j·h_j``; the S largest positive changes are taken (fewer if fewer are
    positive). Among equal changes the units with the smallest ``cost`` come first.
    Returns a (B, n) bool mask of the units to flip.
    """
    h = h.to(torch.float64)
    gain = -2.0 * c.to(torch.float64) * h
    B, n = gain.shape
    if cost is None:
        cost = torch.zeros_like(gain)
    idx1 = torch.sort(cost.to(torch.float64), dim=1, stable=True).indices
    g1 = gain.gather(1, idx1)
    idx2 = torch.sort(g1, dim=1, descending=True, stable=True).indices
    order = idx1.gather(1, idx2)
    g_sorted = gain.gather(1, order)
    S_t = torch.as_tensor(S, dtype=torch.long).expand(B).reshape(B, 1)
    take = (torch.arange(n).expand(B, n) < S_t) & (g_sorted > 0)
    mask = torch.zeros(B, n, dtype=torch.bool)
    mask.scatter_(1, order, take)
    return mask


def _layer_state(A: torch.Tensor, T: torch.Tensor, h: torch.Tensor,
                 u: torch.Tensor) -> torch.Tensor:
    """Integer slack r of layer targets u given input h: target met iff r ≥ 0."""
    k = h @ A.T
    return u * (k - T) - (1 - u) / 2


def _flip_gains(A: torch.Tensor, h: torch.Tensor, u: torch.Tensor, w: torch.Tensor,
                r: torch.Tensor) -> torch.Tensor:
    """Change of the weighted count of met targets for every single flip of h (B, n_in).

    Every active unit's slack moves by exactly ±2, so only slacks in {−2, −1} (can become met)
    and {0, 1} (can become unmet) matter.
    """
    a = w * ((r == -2) | (r == -1))
    b = w * ((r == 0) | (r == 1))
    coef = ((a + b) * u) @ A
    return 0.5 * (a.sum(1, keepdim=True) - b.sum(1, keepdim=True)) - 0.5 * h * coef


def propagate_layer(A: torch.Tensor, T: torch.Tensor, h: torch.Tensor, u: torch.Tensor,
                    w: torch.Tensor, budget: torch.Tensor, noise: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy flips of ``h`` (layer l−1) towards the targets ``u`` of layer l.

    ``A`` (n_out, n_in) and ``T`` (n_out,) float (exact small integers; constant units have a
    zero row of A and must have weight 0), ``h`` (B, n_in) ±1, ``u`` (B, n_out) ±1, ``w``
    (B, n_out) ≥ 0, ``budget`` (B,) the most flips per sample, ``noise`` (B, n_in) in [0, 1)
    breaks ties at random. A flip is taken while it raises the weighted count of met targets
    (or, at equal count, the linear progress of the unmet slacks); no unit flips twice.
    Returns the new ``h``, how much weight of met layer-l targets each of its units would lose
    if it deviated (≥ 0), and the weighted count of layer-l targets still unmet.
    """
    h = h.clone()
    r = _layer_state(A, T, h, u)
    flipped = torch.zeros_like(h, dtype=torch.bool)
    rows_all = torch.arange(len(h))
    for step in range(int(budget.max()) if len(budget) else 0):
        viol = (r < 0) & (w > 0)
        live = (budget > step) & viol.any(1)
        if not live.any():
            break
        gain = _flip_gains(A, h, u, w, r)
        v = w * viol
        soft = -2.0 * h * ((v * u) @ A)  # linear progress of the violated slacks
        lam = 0.01 / (2.0 * v.sum(1, keepdim=True) + 1.0)
        score = gain + lam * soft
        if noise is not None:
            score = score + 1e-3 * lam * noise
        score = score.masked_fill(flipped, -torch.inf)
        best_score, best = score.max(1)
        do = live & (best_score > 1e-9)
        if not do.any():
            break
        rows = rows_all[do]
        i = best[do]
        hi = h[rows, i]
        r[rows] += -2.0 * u[rows] * A[:, i].T * hi[:, None]
        h[rows, i] = -hi
        flipped[rows, i] = True
    loss = -_flip_gains(A, h, u, w, r)
    unmet = (w * (r < 0)).sum(1)
    return h, loss.clamp_min(0), unmet


def _input_sat(ib: IntegerBNN, x: torch.Tensor, u: torch.Tensor, w: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted count of met layer-1 targets and the unmet mask, at inputs x (B, N)."""
    rho = u * ib.first_margins(x)
    met = torch.where(u > 0, rho >= FIRST_LAYER_TOL, rho > FIRST_LAYER_TOL)
    return (w * met).sum(1), ~met


def input_step(ib: IntegerBNN, x_cur: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               u: torch.Tensor, w: torch.Tensor, rounds: int = 4,
               fracs: tuple[float, ...] = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)) -> torch.Tensor:
    """An input in the box [lo, hi] meeting the layer-1 targets ``u`` (weights ``w``).

    Coordinate-wise maximisation of ``Σ_j α_j u_j σ_j W_1j·x′`` (α: weights of unmet units);
    each moved coordinate goes to the bound its coefficient points to. The moved set is the
    top fraction of coordinates by benefit, for each of ``fracs``; the best candidate (by the
    weighted count of met targets) is kept. ``rounds`` rounds, each starting from the best so
    far, with the weights of the units unmet by the round's best try added to α (so units the
    move broke push back). All tensors (B, ·); x float32, u and w float64.
    """
    G = ib.sigma1[:, None] * ib.W1  # (n1, N) float64: ∂(margin_j)/∂x
    w = torch.where(ib.sigma1[None, :] != 0, w, torch.zeros_like(w))
    best_x = x_cur.clone()
    best_s, unmet = _input_sat(ib, best_x, u, w)
    alpha = w * unmet
    arange = torch.arange(x_cur.shape[1]).expand_as(x_cur)
    for _ in range(rounds):
        if not (alpha > 0).any():
            break
        d = (alpha * u) @ G  # (B, N) float64
        target = torch.where(d > 0, hi, lo)
        benefit = d.abs() * (target.double() - best_x.double()).abs()
        order = benefit.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, arange)
        nnz = (benefit > 0).sum(1, keepdim=True)
        base = best_x
        round_s = torch.full_like(best_s, -torch.inf)
        round_unmet = unmet
        for f in fracs:
            k = torch.ceil(f * nnz.double()).long()
            cand = torch.where((rank < k) & (benefit > 0), target, base)
            s, un = _input_sat(ib, cand, u, w)
            top = s > round_s
            round_s = torch.where(top, s, round_s)
            round_unmet = torch.where(top[:, None], un, round_unmet)
            better = s > best_s
            best_x = torch.where(better[:, None], cand, best_x)
            best_s = torch.where(better, s, best_s)
        alpha = alpha + w * round_unmet
    return best_x


def first_layer_cost(ib: IntegerBNN, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                     ) -> torch.Tensor:
    """How hard flipping each layer-1 unit alone is: |margin| / the most the box can move it.

    Below 1 the unit can be flipped inside the box (ignoring the other units); (B, n1).
    """
    m = ib.first_margins(x)
    G = ib.sigma1[:, None] * ib.W1
    up = (hi - x).double()
    dn = (x - lo).double()
    s = -torch.sign(m)
    cap = 0.5 * (up + dn).sum(1, keepdim=True) + 0.5 * s * ((up - dn) @ G.T)
    return torch.where(torch.isfinite(m), m.abs() / cap.clamp_min(1e-12), torch.inf)


class IPROP(Attack):
    """IPROP-style integer target propagation for BNN-WAQ MLPs (L∞, no gradients).

    Keyword-only hyperparameters: ``rounds`` the per-sample budget of rounds;
    ``rounds_per_target`` the most rounds for one target class; ``targets`` how many target
    classes to try (runner-up first, then by clean logit); ``max_flips`` the largest
    last-layer step S; ``grow`` the factor on S after a success; ``patience`` failures at
    S = 1 before the next target; ``candidates`` tries per sample and round; ``layer_flips``
    the most flips per hidden layer in one propagation (None: 2·S + 2); ``keep_weight`` the
    weight of kept units in hidden-layer targets (0: propagate the flip set alone);
    ``input_rounds`` rounds of the input step. Refuses any model that is not a BNN-WAQ MLP
    (:class:`attacks.integer_bnn.UnsupportedModelError`).
    """

    norm = "linf"
    uses_gradients = False

    def __init__(self, *, rounds: int = 50, rounds_per_target: int = 20, targets: int = 9,
                 max_flips: int = 8, grow: int = 2, patience: int = 2, candidates: int = 4,
                 layer_flips: int | None = None, keep_weight: float = 0.0,
                 input_rounds: int = 4) -> None:
        if min(rounds, rounds_per_target, targets, max_flips, grow, patience, candidates) < 1:
            raise ValueError("rounds, rounds_per_target, targets, max_flips, grow, patience and "
                             "candidates must be >= 1")
        if input_rounds < 0 or keep_weight < 0 or (layer_flips is not None and layer_flips < 1):
            raise ValueError("input_rounds and keep_weight must be >= 0, layer_flips >= 1 or "
                             "None")
        self.rounds = rounds
        self.rounds_per_target = rounds_per_target
        self.targets = targets
        self.max_flips = max_flips
        self.grow = grow
        self.patience = patience
        self.candidates = candidates
        self.layer_flips = layer_flips
        self.keep_weight = keep_weight
        self.input_rounds = input_rounds

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        ib = IntegerBNN(model)  # raises UnsupportedModelError for other models
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # many small operations: one thread is the fastest
        try:
            with torch.no_grad():
                result = self._run(ib, x, y, eps, generator)
        finally:
            torch.set_num_threads(threads)
        # cost unit: forward passes of the exact integer network (one per evaluated input)
        count = getattr(model, "count_forwards", None)
        if callable(count):
            count(ib.forwards)
        result.info["integer_forwards"] = ib.forwards
        return result

    def _run(self, ib: IntegerBNN, x: torch.Tensor, y: torch.Tensor, eps: float,
             gen: torch.Generator) -> AttackResult:
        device, shape = x.device, x.shape
        if gen.device.type != "cpu":
            gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen,
                                                                  device=gen.device)))
        x0 = x.detach().reshape(len(x), -1).cpu().to(torch.float32)
        y = y.detach().cpu().long()
        B = len(x0)
        lo = (x0 - eps).clamp(0.0, 1.0)
        hi = (x0 + eps).clamp(0.0, 1.0)
        A = [layer.A.to(torch.float32) for layer in ib.hidden]
        T = [layer.T.to(torch.float32) for layer in ib.hidden]
        active = [layer.sigma != 0 for layer in ib.hidden]
        W_out = ib.W_out.to(torch.float64)

        z0 = ib.logits(x0).double()
        success = z0.argmax(1) != y
        order = z0.scatter(1, y[:, None], -torch.inf).argsort(1, descending=True)
        n_targets = min(self.targets, z0.shape[1] - 1)

        x_best = x0.clone()  # the flipping input, once found
        x_cur = x0.clone()  # the current point of the local search
        t_idx = torch.zeros(B, dtype=torch.long)
        t_rounds = torch.zeros(B, dtype=torch.long)
        used = torch.zeros(B, dtype=torch.long)
        fails = torch.zeros(B, dtype=torch.long)
        S = torch.full((B,), self.max_flips, dtype=torch.long)
        accepted = 0
        K = self.candidates

        while True:
            todo = ~success & (used < self.rounds) & (t_idx < n_targets)
            if not todo.any():
                break
            ids = todo.nonzero().squeeze(1)
            n = len(ids)
            rows = torch.arange(n)
            ys, ts = y[ids], order[ids, t_idx[ids]]
            hs = ib.forward_hidden(x_cur[ids])
            z = ib.logits_from_hidden(hs[-1]).double()
            obj = z[rows, ts] - z[rows, ys]
            # flips still needed (each last-layer flip moves z_t − z_y by at most max|2c|)
            c = W_out[ts] - W_out[ys]
            per_flip = 2 * c.abs().amax(1).clamp_min(1e-12)
            need = torch.floor(-obj / per_flip).clamp_min(0).long() + 1
            S_ids = torch.minimum(S[ids], need).clamp_min(1)

            rep = rows.repeat(K)
            cand = self._propose(ib, A, T, active, x_cur[ids][rep], [h[rep] for h in hs],
                                 c[rep], S_ids[rep], lo[ids][rep], hi[ids][rep], gen)
            z_new = ib.logits(cand).double()
            allr = torch.arange(len(rep))
            obj_k = z_new[allr, ts[rep]] - z_new[allr, ys[rep]]
            flip_k = z_new.argmax(1) != ys[rep]
            # the best try per sample: a flip first, then the largest objective
            pick = torch.where(flip_k, torch.inf, obj_k).view(K, n).argmax(0) * n + rows
            cand, obj_new, flip = cand[pick], obj_k[pick], flip_k[pick]

            better = (obj_new > obj) | flip
            accepted += int(better.sum())
            x_cur[ids[better]] = cand[better]
            success[ids] |= flip
            x_best[ids[flip]] = cand[flip]
            used[ids] += 1
            t_rounds[ids] += 1
            fails[ids] = torch.where(better, 0, fails[ids] + ((S_ids == 1) & ~better).long())
            S[ids] = torch.where(better, (S_ids * self.grow).clamp(max=self.max_flips),
                                 (S_ids // 2).clamp_min(1))
            # next target: stuck at S = 1, or this target's rounds are spent
            give_up = ~flip & (((S[ids] == 1) & (fails[ids] >= self.patience))
                               | (t_rounds[ids] >= self.rounds_per_target))
            gid = ids[give_up]
            t_idx[gid] += 1
            t_rounds[gid] = 0
            fails[gid] = 0
            S[gid] = self.max_flips
            x_cur[gid] = x0[gid]

        x_adv = torch.where(success[:, None], x_best, x_cur)
        x_adv = torch.minimum(torch.maximum(x_adv, lo), hi)  # a no-op, kept as a guarantee
        info: dict[str, Any] = {
            "claimed_success": int(success.sum()),
            "rounds_mean": float(used.double().mean()),
            "accepted_steps": accepted,
            "calibrated_thresholds": ib.calibrated,
        }
        return AttackResult(x_adv.reshape(shape).to(device, x.dtype), info)

    def _propose(self, ib: IntegerBNN, A: list[torch.Tensor], T: list[torch.Tensor],
                 active: list[torch.Tensor], xs: torch.Tensor, hs: list[torch.Tensor],
                 c: torch.Tensor, S: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
        """One candidate input per row: steps 1-3 of a round."""
        L = len(hs)
        hL = hs[-1].to(torch.float32)
        # cost of flipping a last-layer unit: how far it is from its threshold
        if L >= 2:
            slack = hs[-2].to(torch.float32) @ A[-1].T - T[-1]  # unit is +1 iff slack ≥ 0
            cost = torch.where(hL > 0, slack + 1, -slack).double()
        else:
            cost = first_layer_cost(ib, xs, lo, hi)
        cost = cost + 0.5 * torch.rand(hL.shape, generator=gen, dtype=torch.float64)
        flip = last_layer_flips(hL, c, S, cost)
        u = torch.where(flip, -hL, hL)
        w = ((c * hL.double() > 0) | flip).to(torch.float32)
        budget = S * 2 + 2 if self.layer_flips is None else torch.full_like(S, self.layer_flips)
        for li in range(L - 1, 0, -1):  # layer li (1-based) is chosen for layer li + 1
            h_old = hs[li - 1].to(torch.float32)
            noise = torch.rand(h_old.shape, generator=gen)
            h_new, loss, _ = propagate_layer(A[li - 1], T[li - 1], h_old, u,
                                             w * active[li - 1], budget, noise=noise)
            w = torch.where(h_new != h_old, 1.0, (self.keep_weight * loss).clamp(max=1.0))
            u = h_new
        return input_step(ib, xs, lo, hi, u.double(), w.double(), rounds=self.input_rounds)


register_attack(
    "iprop", IPROP,
    traits=Traits("combinatorial", "iprop", uses_gradients=False,
                  applies_to=BNN_WAQ_MLP),
    description="IPROP without a MILP solver (Khalil et al. 2019): exact integer target "
    "propagation on BNN-WAQ MLPs, L∞, no gradients; runner-up target first",
)

__all__ = ["IPROP", "input_step", "last_layer_flips", "propagate_layer"]
