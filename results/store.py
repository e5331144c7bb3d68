"""Append-only JSON Lines storage of records.

Each finished cell is appended (and fsynced) at once, so an interrupted run loses nothing.
A re-run with ``--force`` appends a newer record with the same key; readers keep the last.
Files are never rewritten by the runner.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from results.schema import CellRecord, ModelRecord, RecordError, from_dict, to_dict

RECORDS_DIR = Path(__file__).resolve().parent / "records"


def cells_path(suite: str, root: Path | None = None) -> Path:
    return (root or RECORDS_DIR) / f"{suite}.cells.jsonl"


def models_path(suite: str, root: Path | None = None) -> Path:
    return (root or RECORDS_DIR) / f"{suite}.models.jsonl"


def append(path: Path, record: CellRecord | ModelRecord) -> None:
    """Validate and append one record as one line, flushed to disk."""
    record.validate()
    line = json.dumps(to_dict(record), sort_keys=True, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_partial_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_partial_tail(path: Path) -> None:
    """Remove a half-written last line (a run killed mid-write); finished lines end in \\n."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def read(path: Path, cls: type) -> list[Any]:
    """All records of a file, validated; a bad line raises RecordError naming file and line."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or not line.endswith("\n"):
                continue  # blank, or a half-written last line of a killed run: not a record
            try:
                out.append(from_dict(cls, json.loads(line)))
            except (json.JSONDecodeError, RecordError) as exc:
                raise RecordError(
                    f"corrupt records file {path}, line {lineno}: {exc}. Nothing was run or "
                    "written; fix or remove that line (the other lines are intact)") from None
    return out


def latest_cells(suite: str, root: Path | None = None) -> dict[str, CellRecord]:
    """Cells by key, the last record of each key winning."""
    return {r.key: r for r in read(cells_path(suite, root), CellRecord)}


def latest_models(suite: str, root: Path | None = None) -> dict[str, ModelRecord]:
    return {r.model: r for r in read(models_path(suite, root), ModelRecord)}


def list_suites(root: Path | None = None) -> list[str]:
    root = root or RECORDS_DIR
    return sorted(p.name.removesuffix(".cells.jsonl") for p in root.glob("*.cells.jsonl"))


#: What a cell measured. Two cells that agree on all of these but differ in key differ only
#: in the attack's configuration: the attack was redefined, and the later cell replaces the
#: earlier one (records are append-only, so the earlier one stays in the file).
MEASURED = ["suite", "model", "model_sha256", "attack", "norm", "eps", "n", "seed",
            "inputs_sha256"]


def load(suite: str | None = None, root: Path | str | None = None) -> pd.DataFrame:
    """All (or one suite's) current cell records as a DataFrame, one row per cell.

    Of the cells of one measurement (:data:`MEASURED`) only the most recently created is
    current; the last record of a key wins.
    """
    root = Path(root) if root is not None else None
    suites = [suite] if suite else list_suites(root)
    rows = [to_dict(r) for s in suites for r in latest_cells(s, root).values()]
    columns = [f for f in CellRecord.__dataclass_fields__]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    order = frame.sort_values("created", kind="stable")
    current = order.drop_duplicates(MEASURED, keep="last").index
    return frame.loc[frame.index.isin(current)].reset_index(drop=True)


def load_models(suite: str | None = None, root: Path | str | None = None) -> pd.DataFrame:
    """Model records (card, clean accuracy, diagnostics) as a DataFrame, one row per model."""
    root = Path(root) if root is not None else None
    suites = [suite] if suite else list_suites(root)
    rows = [to_dict(r) for s in suites for r in latest_models(s, root).values()]
    return pd.DataFrame(rows, columns=list(ModelRecord.__dataclass_fields__))
