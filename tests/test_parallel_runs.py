"""Real processes on one grid: parallel runs share it, SIGKILLs lose and duplicate nothing."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procfs import cmdline

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--models", "digits-mlp5x100-ref,digits-mlp5x100-bnn-waq",
        "--attacks", "fgsm,pgd-linf,pgd-linf-njs,pgd-l2", "--eps", "linf=0.1,0.3", "l2=1",
        "--n", "60", "--seed", "7", "--no-progress"]
CELLS = 2 * (3 * 2 + 1)

pytestmark = pytest.mark.slow


#: one thread per process: four processes with two spinning threads each on two cores would
#: spend most of their CPU time waiting for each other
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cmd(results: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", *GRID, "--results", str(results)]


def lines(results: Path) -> list[dict]:
    path = results / "custom.cells.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def vectors(results: Path) -> dict[str, list[int]]:
    return {r["key"]: r["robust"] for r in lines(results)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_models) -> tuple[Path, float]:
    """The grid run once, uninterrupted, and how long that took."""
    out = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    subprocess.run(run_cmd(out), cwd=ROOT, check=True, capture_output=True, env=ENV)
    assert len(lines(out)) == CELLS
    return out, time.monotonic() - t0


def test_four_parallel_runs_compute_every_cell_exactly_once(tmp_path, reference):
    procs = [subprocess.Popen(run_cmd(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-500:] for _, e in outs]
    ran = [int(re.search(r"(\d+) cells run", o).group(1)) for o, _ in outs]
    assert sum(ran) == CELLS  # nothing computed twice: total cell work equals one run's
    records = lines(tmp_path)  # every line parses
    assert len(records) == CELLS and len({r["key"] for r in records}) == CELLS
    assert all(r["status"] == "ok" for r in records)
    assert vectors(tmp_path) == vectors(reference[0])
    assert not list((tmp_path / ".claims").iterdir())


def test_kill_soak_loses_and_duplicates_nothing(tmp_path, reference):
    """SIGKILL runs of the grid at random moments of a run's life (start-up, model loading,
    attacks, appends), then finish it: every cell once, as in an uninterrupted run. A grid
    that gets finished between kills is checked and started afresh in a new folder."""
    ref, duration = reference
    rng = random.Random(12)
    kills = mid_grid = 0
    folders = [tmp_path / "round0"]
    while kills < 10:
        folder = folders[-1]
        before = len(lines(folder))
        proc = subprocess.Popen(run_cmd(folder), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV)
        if kills % 2:  # every other kill lands while cells are being computed and appended
            deadline = time.monotonic() + 2 * duration
            while proc.poll() is None and len(lines(folder)) == before \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            delay = rng.uniform(0.0, 0.2) * duration
        else:  # the others anywhere in a run's life
            delay = rng.uniform(0.1, 1.0) * duration
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            mid_grid += before < len(lines(folder)) < CELLS
        if len(lines(folder)) == CELLS:
            folders.append(tmp_path / f"round{len(folders)}")
    assert mid_grid >= 1
    done = subprocess.run(run_cmd(folders[-1]), cwd=ROOT, capture_output=True, text=True,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-500:]
    for folder in folders:
        records = lines(folder)  # every line parses
        assert len(records) == CELLS and len({r["key"] for r in records}) == CELLS
        assert vectors(folder) == vectors(ref)


def test_jobs_share_one_grid_between_this_process_and_its_helpers(tmp_path, reference):
    """``--jobs 2``: one command, two processes on the grid; together they run each cell once,
    with the per-sample results of a single-process run. Square (seconds per cell) keeps the
    first process busy long enough for the helper to take units of its own."""
    grid = [*GRID, "--attacks", "square,fgsm,pgd-linf,pgd-linf-njs,pgd-l2"]
    single = tmp_path / "single"
    subprocess.run([*run_cmd(single)[:4], *grid, "--results", str(single)], cwd=ROOT,
                   check=True, capture_output=True, env=ENV)
    both = tmp_path / "jobs"
    out = subprocess.run([*run_cmd(both)[:4], *grid, "--results", str(both), "--jobs", "2"],
                         cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    here, helper = map(int, re.search(r"(\d+) in this one, (\d+) in its helpers",
                                      out.stdout).groups())
    total = CELLS + 2 * 2  # square at L∞ 0.1 and 0.3 on both models
    assert here + helper == total and here > 0 and helper > 0
    records = lines(both)
    assert len(records) == total and len({r["key"] for r in records}) == total
    assert vectors(both) == vectors(single)
    # a rerun finds everything recorded and starts no helper process
    again = subprocess.run([*run_cmd(both)[:4], *grid, "--results", str(both), "--jobs", "2"],
                           cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0 and "0 cells run" in again.stdout
    assert "helpers" not in again.stdout and len(lines(both)) == total


def test_jobs_train_missing_models_first_in_the_first_process(tmp_path):
    """Models not yet cached are trained before the helpers start, in the first process at its
    own thread count (trained weights depend on it), on the device it resolved."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "QBENCH_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--models", "digits-mlp5x100-ref",
         "--attacks", "fgsm", "--eps", "0.1", "--n", "20", "--no-progress", "--jobs", "2",
         "--max-train-steps", "3", "--results", str(tmp_path / "records")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    assert "warning" not in out.stderr
    (card_file,) = (tmp_path / "cache").rglob("digits-mlp5x100-ref*.json")
    card = json.loads(card_file.read_text())
    assert card["train_threads"] == 2 and card["trained_on"] == "cpu"


def _helpers_of(pid: int) -> list[int]:
    """The ``--jobs`` helper processes (multiprocessing spawn children) of process ``pid``."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids += [int(k) for k in task.read_text().split()]
    return [k for k in kids if b"spawn_main" in cmdline(k)]


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie that nobody reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_helpers_stop_when_the_first_process_is_killed(tmp_path, reference):
    """SIGKILL the first process of a ``--jobs 2`` run while its helper computes cells: the
    helper stops within 2 s instead of computing on for nobody, and a rerun finishes the grid
    with every cell once and the results of an uninterrupted run."""
    grid = [*GRID, "--attacks", "square,fgsm,pgd-linf,pgd-linf-njs,pgd-l2"]
    cmd = [*run_cmd(tmp_path)[:4], *grid, "--results", str(tmp_path)]
    proc = subprocess.Popen([*cmd, "--jobs", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    helpers: list[int] = []
    while proc.poll() is None and time.monotonic() < deadline:
        helpers = helpers or _helpers_of(proc.pid)
        if helpers and lines(tmp_path):  # the helper is up and the grid under way
            break
        time.sleep(0.05)
    assert proc.poll() is None and helpers, "the run ended before its helper got to work"
    assert len(lines(tmp_path)) < CELLS + 4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    while any(map(_running, helpers)) and time.monotonic() < killed + 2:
        time.sleep(0.02)
    # it stops in about 50 ms; left alone, it computed the rest of the grid (10 s here)
    assert not any(map(_running, helpers)), "a helper kept running after its first process died"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-500:]
    records = lines(tmp_path)
    assert len(records) == CELLS + 4 and len({r["key"] for r in records}) == CELLS + 4
    ref = vectors(reference[0])
    assert {k: v for k, v in vectors(tmp_path).items() if k in ref} == ref
