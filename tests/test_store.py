"""The records store with several writers: locks, tail repair, claims, ok-before-error."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest
from factories import make_cell

import results
from results.schema import RecordError
from results.store import CellLog


def test_complete_last_line_without_newline_is_kept_and_completed(tmp_path):
    path = results.cells_path("s", tmp_path)
    results.append(path, make_cell())
    line = json.dumps(results.schema.to_dict(make_cell(key="k2")), sort_keys=True)
    with open(path, "a") as f:
        f.write(line)  # whole record, but the writer died before its newline
    assert list(results.latest_cells("s", tmp_path)) == ["k1", "k2"]
    results.append(path, make_cell(key="k3"))
    assert list(results.latest_cells("s", tmp_path)) == ["k1", "k2", "k3"]
    assert path.read_text().count("\n") == 3


def test_invalid_utf8_line_is_one_error_naming_the_line(tmp_path):
    path = results.cells_path("s", tmp_path)
    results.append(path, make_cell())
    with open(path, "ab") as f:
        f.write(b'{"key": "\xff\xfe"}\n')
    with pytest.raises(RecordError, match=r"line 2: not UTF-8"):
        results.load(root=tmp_path)


def test_a_recorded_key_is_not_appended_twice_and_errors_never_replace_ok(tmp_path):
    log = CellLog(results.cells_path("s", tmp_path))
    err = make_cell(status="error", robust_acc=None, error="RuntimeError: once")
    assert log.append(err)
    assert log.append(err)  # an error is not done: its retry may fail again and say so
    assert log.append(make_cell(created="2026-01-01T00:00:01Z"))
    assert not log.append(make_cell())  # already recorded ok
    assert not log.append(err)  # an error never follows an ok record of its key
    assert log.append(make_cell(created="2026-01-01T00:00:09Z"), since="2026-01-01T00:00:05Z")
    assert results.cells_path("s", tmp_path).read_text().count("\n") == 4
    assert results.latest_cells("s", tmp_path)["k1"].status == "ok"


def test_an_error_cell_never_hides_an_ok_cell_on_load(tmp_path):
    path = results.cells_path("s", tmp_path)
    results.append(path, make_cell(created="2026-01-01T00:00:01Z"))
    # the same measurement later failed under other weights (a retrain that broke)
    results.append(path, make_cell(key="k2", model_sha256="", status="error", robust_acc=None,
                                   error="StageError: training failed", robust=[],
                                   clean_correct=[], n_attacked=0, clean_acc=None,
                                   created="2026-01-01T00:00:02Z"))
    df = results.load(root=tmp_path)
    assert list(df["key"]) == ["k1"]
    # an error of a measurement that has no ok cell is shown
    results.append(path, make_cell(key="k3", eps=0.3, status="error", robust_acc=None,
                                   error="E: x"))
    assert sorted(results.load(root=tmp_path)["key"]) == ["k1", "k3"]


def _append_many(root: str, keys: list[str], barrier) -> None:
    from pathlib import Path

    log = CellLog(results.cells_path("s", Path(root)))
    barrier.wait()
    for k in keys:
        log.append(make_cell(key=k))


def test_concurrent_appends_record_each_key_once_and_every_line_parses(tmp_path):
    keys = [f"k{i}" for i in range(40)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), keys[i:] + keys[:i], barrier))
             for i in (0, 10, 20, 30)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = results.cells_path("s", tmp_path).read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == sorted(keys)


HOLD = """
import sys, time
from pathlib import Path
from results.store import CellLog
claim = CellLog(Path(sys.argv[1])).claim("abc", wait=False)
print("held" if claim else "busy", flush=True)
time.sleep(60)
"""


def test_a_claim_of_a_live_process_is_respected_and_of_a_dead_one_taken_over(tmp_path):
    path = results.cells_path("s", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        log = CellLog(path)
        assert log.claim("abc", wait=False) is None  # a live process holds it
        mine = log.claim("other", wait=False)
        assert mine is not None  # other cells are free
        mine.release()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        claim = log.claim("abc", wait=True)  # the dead holder's claim is free again
        assert claim is not None and time.monotonic() - t0 < 5
        claim.release()
        assert not list((tmp_path / ".claims").iterdir())  # released claims leave no files
    finally:
        holder.kill()
        holder.wait()
