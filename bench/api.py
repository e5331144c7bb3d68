"""Python API for a model the user brings: ``bench.evaluate(model, ...)``."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from attacks import list_attacks
from bench.calibrate import calibrate
from bench.runner import check_inputs, evaluate_cells, resolve_device
from results.schema import to_dict
from zoo import tensor_sha256
from zoo.errors import match_names


def weights_sha256(model: nn.Module) -> str:
    """Hash of a model's parameters and buffers (its identity in the records)."""
    state = model.state_dict()
    return tensor_sha256(*(state[k].float() for k in sorted(state)))


def evaluate(
    model: nn.Module, *, dataset: str = "mnist5k", attacks: Sequence[str] | str = "pgd-linf",
    eps: dict[str, Sequence[float]] | Sequence[float] | float = 0.1, n: int = 1000,
    device: str = "auto", seed: int = 0, name: str = "custom", data_root: str | None = None,
) -> pd.DataFrame:
    """Attack any torch module mapping [0, 1] inputs to logits; one row per (attack, ε).

    ``attacks`` are registry names or wildcards. ``eps`` is a number or a list (used for the
    norm of every selected attack) or a dict per norm, e.g. ``{"linf": [0.1], "l2": [1.5]}``.
    Every candidate is verified as in the benchmark. Nothing is written to disk; the rows
    have the columns of :func:`results.load`.
    """
    pattern = attacks if isinstance(attacks, str) else ",".join(attacks)
    attack_names = match_names(pattern, list_attacks(), "attack")
    if isinstance(eps, dict):
        eps_by_norm = {k: [float(e) for e in v] for k, v in eps.items()}
    else:
        values = [float(eps)] if isinstance(eps, int | float) else [float(e) for e in eps]
        eps_by_norm = {"linf": values, "l2": values}
    eps_by_norm, data = check_inputs(dataset, attack_names, eps_by_norm, n, data_root)
    device = resolve_device(device)
    model = model.to(device).eval()
    calibrate(model, data, device)  # NJS β1 on the first 101 test images, as in the runner
    records = evaluate_cells(
        model, model_name=name, model_sha256=weights_sha256(model), suite="api", dataset=data,
        attacks=attack_names, eps=eps_by_norm, n=n, seed=seed, device=device,
    )
    return pd.DataFrame([to_dict(r) for r in records])
