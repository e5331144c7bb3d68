"""What every executor shares: :class:`RunOptions` and the :class:`Executor` interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bench.grid import Plan
    from bench.recorder import Recorder


@dataclass(frozen=True)
class RunOptions:
    """What every executor needs besides the plan.

    ``weights`` picks the shipped weights (default) or those trained here (``"trained"``;
    ``retrain`` trains them again first), as in :func:`zoo.get_model`; ``max_train_steps``
    caps the training of models not yet cached (a smoke run).
    """

    device: str = "auto"
    weights: str = "shipped"
    retrain: bool = False
    data_root: str | None = None
    max_train_steps: int | None = None
    progress: bool = True


class Executor(Protocol):
    def execute(self, plan: Plan, rec: Recorder, run: RunOptions) -> None:
        """Compute the plan's cells not yet recorded and hand their records to ``rec``."""
