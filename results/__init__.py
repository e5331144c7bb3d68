"""Benchmark records: their typed schema and their storage. ``results.load()`` reads them."""

from results.schema import SCHEMA_VERSION, CellRecord, ModelRecord, RecordError
from results.store import (
    RECORDS_DIR,
    append,
    cells_path,
    latest_cells,
    latest_models,
    list_suites,
    load,
    load_models,
    models_path,
)

__all__ = [
    "RECORDS_DIR", "SCHEMA_VERSION", "CellRecord", "ModelRecord", "RecordError", "append",
    "cells_path", "latest_cells", "latest_models", "list_suites", "load", "load_models",
    "models_path",
]

from results.bestknown import best_known  # noqa: E402

__all__ += ["best_known"]
