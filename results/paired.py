"""Two attacks (or two models) on the same test points, compared point by point.

Robust accuracies of two attacks on the same points are not independent samples: most points
fall to both or to neither, and only the *discordant* points (broken by one attack and not the
other) say which attack is stronger. The exact sign test on them (McNemar's exact test): under
"equally strong", each discordant point is equally likely to go either way, so the number that
went one way is Binomial(discordant, 1/2). A difference counts only when that two-sided p-value
is below :data:`ALPHA`; otherwise the two are tied at this sample size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: significance level of every paired comparison on the site
ALPHA = 0.05


def sign_test_p(k: int, n: int) -> float:
    """Two-sided exact p-value of ``k`` successes in ``n`` fair coin flips (1.0 when n = 0)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """``a`` against ``b`` on their first ``n`` common points (robust flags, 1 = standing)."""

    n: int
    a_robust: int
    b_robust: int
    only_a_broke: int  # points ``a`` broke and ``b`` did not
    only_b_broke: int
    p: float  # two-sided exact sign test on the discordant points

    @property
    def a_acc(self) -> float:
        return self.a_robust / self.n if self.n else math.nan

    @property
    def b_acc(self) -> float:
        return self.b_robust / self.n if self.n else math.nan

    @property
    def outcome(self) -> str:
        """``a`` is ``stronger`` (leaves significantly fewer points standing), ``weaker``, or
        ``tie`` (no significant difference at :data:`ALPHA`)."""
        if self.p >= ALPHA or self.only_a_broke == self.only_b_broke:
            return "tie"
        return "stronger" if self.only_a_broke > self.only_b_broke else "weaker"

    def counts(self) -> str:
        """'12 vs 3 discordant points, p = 0.035'."""
        return (f"{self.only_a_broke} vs {self.only_b_broke} discordant points, "
                f"p = {self.p:.2g}")


def paired(robust_a: Sequence[int], robust_b: Sequence[int]) -> Paired:
    """Compare two per-sample robust vectors on their first ``min(len)`` points."""
    n = min(len(robust_a), len(robust_b))
    a, b = [int(v) for v in robust_a[:n]], [int(v) for v in robust_b[:n]]
    only_a = sum(1 for u, v in zip(a, b, strict=True) if u == 0 and v == 1)
    only_b = sum(1 for u, v in zip(a, b, strict=True) if u == 1 and v == 0)
    return Paired(n, sum(a), sum(b), only_a, only_b, sign_test_p(only_a, only_a + only_b))
