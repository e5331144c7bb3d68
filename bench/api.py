"""Python API for a model the user brings: ``bench.evaluate(model, ...)``."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from attacks import attack_spec, list_attacks
from bench.determinism import deterministic as deterministic_mode
from bench.engine import evaluate_cells, resolve_device
from bench.grid import check_inputs, plan_cells
from bench.inputs import check_distinct, eps_by_norm
from results.errors import BadEpsilonError, BadModelError, QBenchError
from results.schema import to_dict
from results.vocabulary import match_names
from zoo import tensor_sha256
from zoo.data import Dataset


def weights_sha256(model: nn.Module) -> str:
    """Hash of a model's parameters and buffers (its identity in the records)."""
    state = model.state_dict()
    return tensor_sha256(*(state[k].float() for k in sorted(state)))


def check_arguments(model: object, dataset: object, attacks: object, eps: object, n: object,
                    seed: object) -> None:
    """Raise a QBenchError subclass naming the argument, the value and what is allowed when an
    argument of :func:`evaluate` has the wrong type (before anything loads)."""
    if not isinstance(model, nn.Module):
        raise BadModelError(f"model must be a torch.nn.Module mapping [0, 1] inputs to logits, "
                            f"got {type(model).__name__}")
    if not isinstance(dataset, str):
        raise QBenchError(f"dataset must be the name of a registered dataset (a str, e.g. "
                          f"'mnist5k'), got {dataset!r}")
    if not (isinstance(attacks, str) or (isinstance(attacks, Sequence)
                                         and all(isinstance(a, str) for a in attacks))):
        raise QBenchError(f"attacks must be a name or wildcard (str) or a list of them, got "
                          f"{attacks!r}")
    for name, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise QBenchError(f"{name} must be a whole number (int), got {value!r} "
                              f"({type(value).__name__})")
    values = list(eps.values()) if isinstance(eps, Mapping) else [eps]
    flat = [v for group in values for v in
            (group if isinstance(group, Sequence) and not isinstance(group, str) else [group])]
    bad = [v for v in flat if isinstance(v, bool) or not isinstance(v, numbers.Real | str)]
    if bad:
        raise BadEpsilonError(f"eps must be a number, a list of numbers or a dict norm → "
                              f"numbers (e.g. 0.1, [0.1, 0.3] or {{'linf': [0.1]}}), got {eps!r}")


def check_model(model: nn.Module, data: Dataset, n: int, device: str) -> None:
    """Raise BadModelError unless the model maps the first ``n`` test inputs to finite
    floating-point ``(n, num_classes)`` logits on their device, that depend on the input,
    without writing into the input tensor."""
    x, _ = data.test_subset(n)
    shape = f"({len(x)}, {', '.join(map(str, x.shape[1:]))})"
    x = x.to(device)
    given = x.clone()  # the model sees a copy: the dataset stays as it is whatever it does
    try:
        with torch.no_grad():
            out = model(given)
    except Exception as exc:  # noqa: BLE001 - whatever the user's forward raises
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise BadModelError(f"the model fails on inputs of shape {shape} from dataset "
                            f"{data.name!r} ({type(exc).__name__}: {msg}); it must map them "
                            f"to ({len(x)}, {data.num_classes}) logits") from None
    want = (len(x), data.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadModelError(f"the model returns {got} for inputs of shape {shape}; it must "
                            f"return one logit per class, shape {want}")
    if not out.is_floating_point():
        raise BadModelError(f"the model returns {out.dtype} logits; it must return "
                            "floating-point logits (gradient attacks differentiate them)")
    if out.device != x.device:
        raise BadModelError(f"the model returns logits on {out.device} for inputs on "
                            f"{x.device}; it must return them on its inputs' device")
    bad = int((~torch.isfinite(out)).any(1).sum())
    if bad:
        raise BadModelError(f"the model returns NaN or infinite logits for {bad} of {len(x)} "
                            "test inputs; it must return finite logits")
    if not torch.equal(given, x):
        raise BadModelError("the model writes into its input tensor (an in-place operation "
                            "on x); it must leave its inputs as they are: attacks and the "
                            "dataset share them")
    if len(x) > 1 and bool((out == out[:1]).all()):
        raise BadModelError(f"the model returns the same logits for all {len(x)} test "
                            "inputs: its output ignores its input")


def evaluate(
    model: nn.Module, *, dataset: str = "mnist5k", attacks: Sequence[str] | str = "pgd-linf",
    eps: Mapping[str, Sequence[float]] | Sequence[float] | float = 0.1, n: int = 1000,
    device: str = "auto", seed: int = 0, name: str = "custom", data_root: str | None = None,
    deterministic: bool = False,
) -> pd.DataFrame:
    """Attack any torch module mapping [0, 1] inputs to logits; one row per (attack, ε).

    ``attacks`` are registry names or wildcards. ``eps`` is a number or a list (used for the
    norm of every selected attack) or a dict per norm, e.g. ``{"linf": [0.1], "l2": [1.5]}``.
    Every candidate is verified as in the benchmark. Nothing is written to disk; the rows
    have the columns of :func:`results.load`. ``deterministic=True`` runs with deterministic
    CUDA algorithms (see :mod:`bench.determinism`); the previous mode is restored afterwards.

    Bad arguments, and a model whose output is not finite ``(N, classes)`` logits, raise a
    :class:`results.errors.QBenchError` subclass with a one-line message before any attack runs.
    """
    check_arguments(model, dataset, attacks, eps, n, seed)
    pattern = attacks if isinstance(attacks, str) else ",".join(attacks)
    attack_names = match_names(pattern, list_attacks(), "attack")
    checked, data = check_inputs(dataset, attack_names, eps_by_norm(eps), n, data_root)
    checked = check_distinct(checked)
    device = resolve_device(device)
    with deterministic_mode(deterministic):
        model = model.to(device).eval()
        check_model(model, data, n, device)
        cells = plan_cells(data, [(a, checked[attack_spec(a).norm], n) for a in attack_names])
        records = evaluate_cells(
            model, cells, model_name=name, model_sha256=weights_sha256(model), suite="api",
            dataset=data, n=n, seed=seed, device=device,
        )
        return pd.DataFrame([to_dict(r) for r in records])
