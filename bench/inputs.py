"""Checks of ε arguments shared by the command line and :func:`bench.evaluate`.

Range checks per norm live in :func:`attacks.check_eps`; here: the forms ε is written in
(``0.1``, ``8/255``, ``linf=0.1,0.3``), unknown norms, empty values and duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

from attacks import NORMS, check_eps
from results.errors import BadEpsilonError

EPS_FORMS = "write 0.1, 8/255, or NORM=v1,v2 such as linf=0.1,0.3"


def parse_eps(tokens: Sequence[str]) -> dict[str, list[float]]:
    """``['0.1', '8/255', 'l2=1.5,2']`` → ``{'linf': [0.1, 0.031…], 'l2': [0.1, …, 1.5, 2.0]}``.

    A bare value applies to every norm; ``NORM=v1,v2`` applies to one norm only. An empty
    token, a norm without values and the same ε twice for a norm are refused.
    """
    out: dict[str, list[float]] = {}
    for token in tokens:
        norm, _, values = token.rpartition("=")
        if norm and norm not in NORMS:
            raise BadEpsilonError(f"unknown norm {norm!r} in --eps {token!r}; allowed: "
                                  f"{', '.join(NORMS)}")
        parts = [v.strip() for v in values.split(",")]
        if not any(parts):
            raise BadEpsilonError(f"--eps {token!r} holds no value; {EPS_FORMS}")
        for v in parts:
            if not v:
                raise BadEpsilonError(f"--eps {token!r} has an empty value between commas; "
                                      f"{EPS_FORMS}")
            value = _number(v)
            for n in [norm] if norm else NORMS:
                out.setdefault(n, []).append(value)
    return check_distinct(out)


def _number(v: str) -> float:
    """One ε of the command line (a fraction such as 8/255 allowed); -0 is 0."""
    try:
        return (float(Fraction(v)) if "/" in v else float(v)) + 0.0
    except (ValueError, ZeroDivisionError):
        raise BadEpsilonError(f"--eps {v!r} is not a number ({EPS_FORMS})") from None


def one_eps(text: str, norm: str) -> float:
    """The one ε of a board (``bench board --eps``): a single number for ``norm``."""
    if "=" in text:
        raise BadEpsilonError(f"--eps {text!r}: a board takes one number; choose the norm "
                              f"with --norm (e.g. --norm {text.partition('=')[0].strip()} "
                              f"--eps {text.partition('=')[2].strip()})")
    parts = [v.strip() for v in text.split(",")]
    if len(parts) > 1:
        raise BadEpsilonError(f"--eps {text!r}: a board shows one threat model, so give one "
                              f"ε (got {len(parts)}); run `bench board` once per ε")
    if not parts[0]:
        raise BadEpsilonError(f"--eps {text!r} holds no value; {EPS_FORMS}")
    return check_eps(_number(parts[0]), norm)


def eps_by_norm(eps: Mapping[str, Sequence[float]] | Sequence[float] | float
                ) -> dict[str, list[float]]:
    """The ``eps`` argument of :func:`bench.evaluate` as ε values per norm (a number or a list
    applies to every norm). Values stay as given: :func:`attacks.check_eps` checks them."""
    if isinstance(eps, Mapping):
        unknown = sorted(str(k) for k in eps if k not in NORMS)
        if unknown:
            raise BadEpsilonError(f"unknown norm {unknown[0]!r} in eps; allowed: "
                                  f"{', '.join(NORMS)}")
        out = {k: [v] if isinstance(v, int | float | str) else list(v) for k, v in eps.items()}
    else:
        values = [eps] if isinstance(eps, int | float | str) else list(eps)
        out = {norm: list(values) for norm in NORMS}
    empty = sorted(k for k, v in out.items() if not v)
    if empty or not out:
        raise BadEpsilonError(f"eps gives no value for {empty[0] if empty else 'any norm'}; "
                              "give a number, a list, or a dict such as {'linf': [0.1, 0.3]}")
    return out


def check_distinct(eps: dict[str, list[float]]) -> dict[str, list[float]]:
    """Refuse the same ε twice for one norm (``0.1 0.1``, or ``8/255`` and ``0.0313725…``)."""
    for norm, values in eps.items():
        seen: list[float] = []
        for v in values:
            if any(abs(v - s) <= 1e-12 for s in seen):
                raise BadEpsilonError(f"ε={v:g} is given twice for the {norm} norm; give each "
                                      "ε once")
            seen.append(v)
    return eps
