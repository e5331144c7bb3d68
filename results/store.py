"""Append-only JSON Lines storage of records, safe with several writers.

Each finished cell is appended (and fsynced) at once, so an interrupted run loses nothing.
Several processes may append to one file: every append takes an exclusive lock on
``<file>.lock``, repairs the tail a killed writer may have left, re-reads what others appended
since, and skips a cell whose key is already recorded as ``ok``. Processes that run the same
grid share its cells through claims (:meth:`CellLog.claim`): a cell claimed by a live process
is left to it, and the claim of a process that died is free again (the operating system drops
the lock of a dead process). Files are never rewritten; a record is only ever appended.

Only ``ok`` cells count as done. An ``error`` cell is kept as a record of what went wrong,
is retried by the next run and never replaces an ``ok`` cell of the same key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from results.schema import CellRecord, ModelRecord, RecordError, from_dict, to_dict

RECORDS_DIR = Path(__file__).resolve().parent / "records"
CLAIMS_DIR = ".claims"  # inside the records folder, next to the files it guards


def cells_path(suite: str, root: Path | None = None) -> Path:
    return (root or RECORDS_DIR) / f"{suite}.cells.jsonl"


def models_path(suite: str, root: Path | None = None) -> Path:
    return (root or RECORDS_DIR) / f"{suite}.models.jsonl"


def _kind(path: Path) -> str:
    """'a directory', 'a FIFO', … : what stands at ``path``."""
    mode = path.stat().st_mode
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(path: Path) -> RecordError:
    return RecordError(f"records file {path} is {_kind(path)}, not a regular file; move it "
                       "away or give --results another folder")


def check_records_folder(suite: str, root: Path | None = None, *, write: bool) -> None:
    """Refuse, before anything is read or written, a records folder a run or a board cannot
    use: a folder that is a file, cannot be created or (``write``) written, and records or
    lock files that are not regular files (a FIFO would block every reader). Raises
    :class:`RecordError` naming the path and what to do."""
    folder = Path(root) if root is not None else RECORDS_DIR
    if folder.exists() and not folder.is_dir():
        raise RecordError(f"records folder {folder} is {_kind(folder)}, not a folder; give "
                          "--results a folder (new or existing)")
    files = [cells_path(suite, folder), models_path(suite, folder)]
    files += [Path(f"{f}.lock") for f in files]
    for path in files:
        if path.exists() and not path.is_file():
            raise _not_regular(path)
    claims = folder / CLAIMS_DIR
    if write and claims.exists() and not claims.is_dir():
        raise RecordError(f"{claims} (where a run marks the cells it computes) is "
                          f"{_kind(claims)}, not a folder; move it away or give --results "
                          "another folder")
    if not write:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordError(f"records folder {folder} cannot be created ({exc.strerror}); give "
                          "--results a folder you can write to") from None
    probe = folder / f".qbench-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RecordError(f"records folder {folder} is not writable ({exc.strerror}); give "
                          "--results a folder you can write to") from None
    for path in files:
        try:  # opened for appending and closed: nothing is written
            if path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as exc:  # e.g. an immutable file
            raise RecordError(f"records file {path} cannot be written ({exc.strerror}); make "
                              "it writable or give --results another folder") from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of a records file (an advisory ``flock`` on ``<file>.lock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise RecordWriteError(f"cannot open the lock file {path}.lock ({exc.strerror}); "
                               "give --results a folder you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _encode(record: CellRecord | ModelRecord) -> bytes:
    record.validate()
    return (json.dumps(to_dict(record), sort_keys=True, allow_nan=False) + "\n").encode()


class RecordWriteError(RecordError):
    """A record could not be written (disk full, I/O error): an environment failure, not bad
    input. The file is left as it was before the write."""


def _write(path: Path, line: bytes) -> None:
    """Append ``line`` whole or not at all: a failed write (a full disk) is truncated back to
    the file's previous end, so no half-written line is ever left behind."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:  # e.g. an immutable file
        raise RecordWriteError(f"cannot write to records file {path} ({exc.strerror}); every "
                               "record before this one is intact") from None
    try:
        end = os.fstat(fd).st_size
        try:
            rest = memoryview(line)
            while rest:
                rest = rest[os.write(fd, rest):]
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, end)
            raise RecordWriteError(f"cannot write to records file {path} ({exc.strerror}); "
                                   "every record before this one is intact, and a rerun "
                                   "continues from them once there is room") from None
    finally:
        os.close(fd)


def append(path: Path, record: CellRecord | ModelRecord) -> None:
    """Validate and append one record as one line, under the file's lock, flushed to disk."""
    line = _encode(record)
    with locked(path):
        repair_tail(path)
        _write(path, line)


def repair_tail(path: Path) -> None:
    """Make the file end in a newline; call under the lock.

    A last line without its newline is either a complete record (kept and completed) or a
    record a killed writer left half-written (cut off: finished lines end in ``\\n``).
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1
        if _parses(data[start:]):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def _parses(blob: bytes) -> bool:
    try:
        return isinstance(json.loads(blob.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every record line; a last line without newline only if whole."""
    if not path.is_file():  # a FIFO would block the read forever, a directory cannot be read
        raise _not_regular(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline
    if tail and _parses(tail):
        lines.append(tail)
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(
                f"corrupt records file {path}, line {lineno}: not UTF-8 text (byte "
                f"{exc.start}). Nothing was run or written; fix or remove that line (the other "
                "lines are intact)") from None


def read(path: Path, cls: type) -> list[Any]:
    """All records of a file, validated; a bad line raises RecordError naming file and line."""
    if not path.exists():
        return []
    out = []
    for lineno, line in _lines(path):
        try:
            out.append(from_dict(cls, json.loads(line)))
        except (json.JSONDecodeError, RecordError) as exc:
            raise RecordError(
                f"corrupt records file {path}, line {lineno}: {exc}. Nothing was run or "
                "written; fix or remove that line (the other lines are intact)") from None
    return out


def latest_cells(suite: str, root: Path | None = None) -> dict[str, CellRecord]:
    """Cells by key: the last ``ok`` record of each key, else its last (error) record."""
    out: dict[str, CellRecord] = {}
    for r in read(cells_path(suite, root), CellRecord):
        if r.status == "ok" or out.get(r.key) is None or out[r.key].status != "ok":
            out[r.key] = r
    return out


def latest_models(suite: str, root: Path | None = None) -> dict[str, ModelRecord]:
    return latest_models_in(models_path(suite, root))


def latest_models_in(path: Path) -> dict[str, ModelRecord]:
    """Model records by model name, the last one winning."""
    return {r.model: r for r in read(path, ModelRecord)}


class ClaimLock:
    """A cell this process is computing: an exclusive ``flock`` on its claim file."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked: a waiter sees the file is gone
        os.close(self._fd)
        self._fd = -1


class CellLog:
    """One suite's cells file as several processes share it.

    Keeps the keys of ``ok`` cells seen so far and reads only what was appended since
    (:meth:`refresh`). :meth:`append` checks under the lock that the key is not recorded yet.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._lineno = 0
        self._ok: dict[str, str] = {}  # key -> creation time of its latest ok record

    def refresh(self) -> None:
        """Read the complete lines appended since the last call."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for raw in data[:end].split(b"\n")[:-1]:
            self._lineno += 1
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                key, status, created = obj["key"], obj["status"], obj.get("created", "")
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                raise RecordError(
                    f"corrupt records file {self.path}, line {self._lineno}: not a cell record. "
                    "Fix or remove that line (the other lines are intact)") from None
            if status == "ok":
                self._ok[key] = max(created, self._ok.get(key, ""))
        self._offset += end

    def done(self, key: str, since: str = "") -> bool:
        """Whether an ``ok`` record of ``key`` was seen (created after ``since``, if given)."""
        created = self._ok.get(key)
        return created is not None and (not since or created > since)

    def append(self, record: CellRecord, since: str = "") -> bool:
        """Append unless the key is already recorded ``ok`` (after ``since``, if given); an error
        record never follows an ``ok`` one. Returns whether the record was written."""
        line = _encode(record)
        with locked(self.path):
            repair_tail(self.path)
            self.refresh()
            if self.done(record.key, since) or (
                    record.status != "ok" and record.key in self._ok):
                return False
            _write(self.path, line)
            self.refresh()
        return True

    def claim(self, key: str, *, wait: bool) -> ClaimLock | None:
        """Claim a cell; None when another live process holds it (and ``wait`` is False).

        With ``wait`` the call blocks until the holder releases the claim or dies.
        """
        folder = self.path.parent / CLAIMS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.path.name}.{key}"
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            try:  # the holder may have released (and removed) the file while we waited
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                return ClaimLock(path, fd)
            os.close(fd)


def is_current_model_record(prev: ModelRecord | None, sha: str, n: int,
                            diagnostics_version: object) -> bool:
    """Whether ``prev`` already describes weights ``sha`` on ``n`` points, with diagnostics of
    ``diagnostics_version`` (``bench.calibrate.DIAGNOSTICS_VERSION``)."""
    return (prev is not None and prev.model_sha256 == sha and prev.n == n
            and bool(prev.diagnostics) and prev.diagnostics.get("version") == diagnostics_version)


def append_model(path: Path, record: ModelRecord) -> bool:
    """Append a model record unless one of the same weights, n and diagnostics version is the
    latest."""
    line = _encode(record)
    with locked(path):
        repair_tail(path)
        prev = latest_models_in(path).get(record.model)
        if is_current_model_record(prev, record.model_sha256, record.n,
                                   (record.diagnostics or {}).get("version")):
            return False
        _write(path, line)
    return True


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

    Of the ``ok`` cells of one measurement (:data:`MEASURED`) only the most recently created
    is current. An error cell is current only where its measurement (any weights of the
    model) has no ``ok`` cell: errors never hide a result.
    """
    root = Path(root) if root is not None else None
    suites = [suite] if suite else list_suites(root)
    rows = [to_dict(r) for s in suites for r in latest_cells(s, root).values()]
    columns = [f for f in CellRecord.__dataclass_fields__]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    order = frame.sort_values("created", kind="stable")
    ok = order[order["status"] == "ok"].drop_duplicates(MEASURED, keep="last")
    unweighted = [k for k in MEASURED if k != "model_sha256"]
    answered = set(map(tuple, ok[unweighted].itertuples(index=False)))
    errors = order[order["status"] != "ok"].drop_duplicates(unweighted, keep="last")
    errors = errors[[tuple(r) not in answered
                     for r in errors[unweighted].itertuples(index=False)]]
    current = set(ok.index) | set(errors.index)
    return frame.loc[frame.index.isin(current)].reset_index(drop=True)


def load_models(suite: str | None = None, root: Path | str | None = None) -> pd.DataFrame:
    """Model records (card, clean accuracy, diagnostics) as a DataFrame, one row per model."""
    root = Path(root) if root is not None else None
    suites = [suite] if suite else list_suites(root)
    rows = [to_dict(r) for s in suites for r in latest_models(s, root).values()]
    return pd.DataFrame(rows, columns=list(ModelRecord.__dataclass_fields__))
