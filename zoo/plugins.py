"""Models from other packages: the ``qbench.models`` entry-point group.

A package registers its models the way the zoo does (``zoo.register_model``) in a module (or a
function) named by an entry point of group ``qbench.models``, e.g. in its ``pyproject.toml``::

    [project.entry-points."qbench.models"]
    mypkg = "mypkg.qbench_models"          # imported: its register_model calls run

Importing :mod:`zoo` loads every such entry point, so ``python -m bench run --models 'mypkg-*'``
finds them, in this process and in every Ray worker, without editing the zoo. A plugin that
fails to load is reported as a warning and left out; the zoo's own models are unaffected.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

GROUP = "qbench.models"


def load_plugins() -> list[str]:
    """Load every installed ``qbench.models`` entry point; the names of those that loaded."""
    loaded = []
    for ep in entry_points(group=GROUP):
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the zoo
            warnings.warn(f"qbench: model plugin {ep.name!r} ({ep.value}) failed to load and "
                          f"is left out: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        loaded.append(ep.name)
    return loaded
