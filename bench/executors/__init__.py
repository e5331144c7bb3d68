"""Where a plan's cells are computed: here, in several local processes, or on a Ray cluster.

Every executor takes the same three things, ``execute(plan, recorder, run)``: the
:class:`bench.grid.Plan` (computed once by the driver), the :class:`bench.recorder.Recorder`
(the one writer of the records) and the :class:`RunOptions` every executor shares (where the
models come from, the device); what only one executor needs is a field of its own options
object (:class:`Local`, :class:`Processes`, :class:`RayCluster`). They all call the same
engine (:func:`bench.engine.evaluate_cells`), so the cells, keys and records are the same
whichever runs them. :func:`bench.runner.run_grid` picks one.
"""

from bench.executors.base import Executor, RunOptions
from bench.executors.local import Local
from bench.executors.processes import Processes
from bench.executors.ray_cluster import RayCluster

__all__ = ["Executor", "Local", "Processes", "RayCluster", "RunOptions"]
