"""Typed schema of the benchmark's records, checked on every write and every load.

One :class:`CellRecord` per (model, attack, norm, ε) cell of a suite, and one
:class:`ModelRecord` per model and suite (clean accuracy, card, gradient diagnostics). Numbers
are stored as JSON numbers, never as strings; each record says what produced it.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from results.vocabulary import NORMS

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A record that does not match the schema (the message names the field)."""


@dataclass
class CellRecord:
    """The outcome of one attack at one ε on the first ``n`` test points of one model."""

    key: str  # identity of the computation: same key, same result
    suite: str
    dataset: str
    model: str
    model_sha256: str
    attack: str
    attack_config: dict[str, Any]
    norm: str
    eps: float
    n: int  # test points in the cell
    n_attacked: int  # of which correctly classified, hence attacked
    clean_acc: float | None  # None only for an error before the clean pass
    robust_acc: float | None  # None when the attack failed with an error
    seconds: float  # wall time of the attack on the attacked points
    seconds_per_sample: float  # seconds / n_attacked
    device: str
    seed: int
    robust: list[int]  # per test point: 1 = still correct after the attack, 0 = broken or wrong
    clean_correct: list[int]  # per test point: 1 = correct on the clean input
    # (both empty in an error cell whose model failed before its clean pass)
    inputs_sha256: str  # hash of the exact test inputs and labels
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    rejected: int = 0  # candidates that fooled the model but broke the threat model
    forwards_per_sample: float | None = None
    backwards_per_sample: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # attack-specific (β statistics …)
    versions: dict[str, str] = field(default_factory=dict)
    hardware: str = ""
    created: str = ""  # UTC ISO time
    schema_version: int = SCHEMA_VERSION
    host: str = ""  # the machine that computed the cell (records before it existed: "")

    def validate(self) -> CellRecord:
        _check_types(self)
        if self.norm not in NORMS:
            raise RecordError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.status not in ("ok", "error"):
            raise RecordError(f"status must be 'ok' or 'error', got {self.status!r}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise RecordError(f"eps must be a finite number >= 0, got {self.eps!r}")
        early_error = (self.status == "error" and not self.robust and not self.clean_correct
                       and self.n_attacked == 0)
        if not early_error and (
                not 0 <= self.n_attacked <= self.n or len(self.robust) != self.n
                or len(self.clean_correct) != self.n or sum(self.clean_correct) != self.n_attacked):
            raise RecordError(f"n={self.n}, n_attacked={self.n_attacked}, len(robust)="
                              f"{len(self.robust)} and clean_correct are inconsistent")
        if any(v not in (0, 1) for v in self.robust + self.clean_correct):
            raise RecordError("robust and clean_correct must hold only 0 and 1")
        if any(r > c for r, c in zip(self.robust, self.clean_correct, strict=True)):
            raise RecordError("a point is robust but not correct on its clean input")
        if self.clean_acc is not None:
            _check_fraction("clean_acc", self.clean_acc)
        elif not early_error:
            raise RecordError("clean_acc is required once the clean pass ran")
        if self.status == "ok":
            if self.robust_acc is None:
                raise RecordError("robust_acc is required when status is 'ok'")
            _check_fraction("robust_acc", self.robust_acc)
            if abs(self.robust_acc - sum(self.robust) / self.n) > 1e-9:
                raise RecordError("robust_acc does not equal the mean of the robust vector")
            if self.robust_acc > self.clean_acc + 1e-9:
                raise RecordError("robust_acc is larger than clean_acc")
        elif not self.error:
            raise RecordError("an error record needs its error message")
        return self


@dataclass
class ModelRecord:
    """What a suite knows about one model: its card, clean accuracy and diagnostics."""

    suite: str
    dataset: str
    model: str
    model_sha256: str
    clean_acc: float  # on the suite's n test points
    n: int
    card: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, float | None] = field(default_factory=dict)  # None: undefined
    versions: dict[str, str] = field(default_factory=dict)
    hardware: str = ""
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def validate(self) -> ModelRecord:
        _check_types(self)
        _check_fraction("clean_acc", self.clean_acc)
        return self


def _check_fraction(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RecordError(f"{name} must be a fraction in [0, 1], got {value!r}")


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False
        if item is int or item is str:  # per-sample lists: one pass over their types
            return set(map(type, value)) <= {item}
        return all(_matches(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(
            _matches(a, k) and _matches(b, v) for a, b in value.items())
    return isinstance(value, tp)


def _check_types(record: Any) -> None:
    hints = typing.get_type_hints(type(record))
    for f in fields(record):
        value = getattr(record, f.name)
        if not _matches(value, hints[f.name]):
            raise RecordError(
                f"field {f.name!r} must be {hints[f.name]}, got {type(value).__name__} "
                f"{value!r:.60}")


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build and validate a record from a JSON object; unknown or missing fields are errors."""
    if not isinstance(data, dict):
        raise RecordError(f"a record must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"unknown fields {unknown}")
    try:
        record = cls(**data)
    except TypeError as exc:
        raise RecordError(str(exc)) from None
    if record.schema_version != SCHEMA_VERSION:
        raise RecordError(f"schema_version {record.schema_version} is not {SCHEMA_VERSION}")
    return record.validate()


def to_dict(record: Any) -> dict[str, Any]:
    """The record as plain JSON data (a copy: changing it leaves the record as it is)."""
    return {f.name: _plain_copy(getattr(record, f.name)) for f in fields(record)}


def _plain_copy(value: Any) -> Any:
    """A copy of JSON data; lists of scalars (per-sample results) are copied in one step."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        if any(isinstance(v, list | dict) for v in value):
            return [_plain_copy(v) for v in value]
        return list(value)
    if isinstance(value, tuple):
        return tuple(_plain_copy(v) for v in value)
    return value


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float inside it (dicts, lists) replaced by None:
    JSON has no such numbers, and a record stores an undefined number as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
