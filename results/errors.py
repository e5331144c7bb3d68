"""Errors that carry a message a user can act on. The CLI prints them and exits with code 2."""

from __future__ import annotations

import difflib


class QBenchError(Exception):
    """Base class: bad input or missing resources, explained in one line."""


class UnknownNameError(QBenchError, KeyError):
    """A model, attack, dataset or suite name (or pattern) that matches nothing."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        close = difflib.get_close_matches(name, choices, n=5, cutoff=0.4)
        if not close and any(ch in name for ch in "*?["):
            close = difflib.get_close_matches(name.strip("*?"), choices, n=5, cutoff=0.3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = f" List them with `python -m bench list {kind}s`."
        super().__init__(f"unknown {kind} {name!r}.{hint}{listing}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataMissingError(QBenchError):
    """A dataset's files are absent and cannot be downloaded."""


class CorruptDataError(DataMissingError):
    """A dataset file exists but is malformed (bad header, counts, labels, pixels or pickle).

    A subclass of DataMissingError: either way there is no usable data.
    """


class CorruptWeightsError(QBenchError):
    """A cached weights file does not match its recorded sha256 or cannot be parsed."""


class EmptyPatternError(QBenchError, ValueError):
    """A name pattern (``--models``, ``--attacks``) that holds no name at all."""


class BadModelError(QBenchError, ValueError):
    """A user's model whose output is not a finite ``(N, num_classes)`` tensor of logits."""


class BadEpsilonError(QBenchError, ValueError):
    """An epsilon that is negative, not finite, or out of range for its norm."""
