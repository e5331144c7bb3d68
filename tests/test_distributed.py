"""The Ray executor: the same cells, keys and per-sample results as the local one, under faults.

Every Ray here is local (2 CPUs): started by the run itself, or by a fixture for the fault test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from procfs import cmdline

import bench
import results
from bench.executors import RayCluster
from bench.executors.ray_cluster import Shipped, Unit, execute_unit, pack
from bench.grid import plan_cells

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

GRID = dict(suite="t", dataset="digits", models="digits-mlp5x100-ref,digits-mlp5x100-bnn-waq",
            attacks="fgsm,pgd-linf,pgd-linf-njs,deepfool-linf,square", eps={"linf": [0.1, 0.3]},
            n=60, seed=4)


def per_sample(root: Path) -> dict[str, tuple]:
    df = results.load("t", root=root)
    return {r.key: (r.status, tuple(r.robust), tuple(r.clean_correct)) for r in df.itertuples()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, digits_models) -> Path:
    """The grid computed in this process, one thread, as a Ray task computes it."""
    out = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = bench.run_grid(bench.build_grid(**GRID), device="cpu", results_root=out,
                                 progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and summary.ran == 20
    return out


def test_ray_gives_the_local_cells_keys_and_per_sample_results(tmp_path, local_run):
    assert not ray.is_initialized()
    summary = bench.run_grid(bench.build_grid(**GRID), RayCluster(threads_per_task=1),
                             results_root=tmp_path, progress=False)
    assert not ray.is_initialized()  # the run started its own local Ray and stopped it
    assert summary.ok and summary.ran == 20
    assert per_sample(tmp_path) == per_sample(local_run)
    df = results.load("t", root=tmp_path)
    assert (df["host"] != "").all() and (df["device"] == "cpu").all()
    assert sorted(results.load_models("t", root=tmp_path)["model"]) == sorted(
        GRID["models"].split(","))
    again = bench.run_grid(bench.build_grid(**GRID), RayCluster(), results_root=tmp_path,
                           progress=False)
    assert again.ran == 0 and again.skipped == 20  # resume: nothing is sent twice


def _kill_first_task_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running a cell task."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            if cmdline(pid).startswith(b"ray::execute_unit"):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.01)


def test_a_worker_killed_mid_task_is_retried_without_duplicates(tmp_path, local_run):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_task_worker, args=(stop, killed))
    killer.start()
    try:
        summary = bench.run_grid(bench.build_grid(**GRID), RayCluster(), results_root=tmp_path,
                                 progress=False)
    finally:
        stop.set()
        killer.join()
        ray.shutdown()
    assert killed, "no worker was caught running a task"
    assert summary.ok and summary.ran == 20
    lines = results.cells_path("t", tmp_path).read_text().splitlines()
    assert len(lines) == 20  # the retried task's cells are recorded once
    assert per_sample(tmp_path) == per_sample(local_run)


def test_weights_that_do_not_match_their_card_become_error_cells(digits_models, digits):
    from zoo import get_model

    _, card = get_model("digits-mlp5x100-ref", progress=False)
    good = pack("digits-mlp5x100-ref", card)
    bad = Shipped(good.name, good.blob[:-1] + bytes([good.blob[-1] ^ 1]), card)
    grid = bench.build_grid(**{**GRID, "models": "digits-mlp5x100-ref", "attacks": "fgsm"})
    cells = tuple(plan_cells(digits, [("fgsm", grid.eps["linf"], grid.n)]))
    keys = [c.key(card["weights_sha256"], grid.seed) for c in cells]
    out = execute_unit(Unit("digits-mlp5x100-ref", "fgsm", cells), bad, grid=grid,
                       data_root=None, device="cpu", threads=1)
    assert [r.status for r in out] == ["error", "error"]
    assert all("sha256" in r.error and r.key in keys for r in out)


def test_a_plugin_model_runs_by_name_locally_and_on_ray(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "plugins"), "OMP_NUM_THREADS": "1"}
    listed = subprocess.run([sys.executable, "-m", "bench", "list", "models", "mypkg-*"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["mypkg-digits-mlp2x32-bnn-waq"]
    run = [sys.executable, "-m", "bench", "run", "--models", "mypkg-*", "--attacks",
           "pgd-linf,pgd-linf-njs", "--eps", "linf=0.2", "--n", "50", "--no-progress"]
    for executor in ("local", "ray"):
        done = subprocess.run([*run, "--executor", executor, "--results",
                               str(tmp_path / executor)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-800:]
    assert per_sample_custom(tmp_path / "local") == per_sample_custom(tmp_path / "ray")


def per_sample_custom(root: Path) -> dict[str, tuple]:
    df = results.load("custom", root=root)
    assert len(df) == 2 and set(df["model"]) == {"mypkg-digits-mlp2x32-bnn-waq"}
    return {r.key: tuple(r.robust) for r in df.itertuples()}


def _raylets() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and b"raylet" in cmdline(p.name).split(b"\0")[0]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the raylets in /proc")
def test_a_real_cluster_started_as_the_readme_says_survives_a_killed_node(tmp_path_factory,
                                                                         local_run):
    """The README's recipe, run as a user would: token authentication, `ray start --head`, a
    second node joined with `ray start --address` (both on this machine, loopback only), the
    grid through `--ray-address`; the joined node's raylet is SIGKILLed mid-run. Every cell
    is recorded once, with the local run's per-sample results."""
    base = Path(tempfile.mkdtemp(prefix="qbr", dir="/tmp"))  # Ray's socket paths must be short
    home, rec = base / "home", base / "rec"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    address = f"127.0.0.1:{port}"

    def ray_cmd(*args: str) -> None:
        done = subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    try:
        ray_cmd("get-auth-token", "--generate")  # the token every node and the driver read
        ray_cmd("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={base / 't'}")
        head = _raylets()
        ray_cmd("start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1")
        joined = _raylets() - head
        assert len(joined) == 1, (head, joined)
        t0 = time.monotonic()
        driver = subprocess.Popen(
            [sys.executable, "-m", "bench", "run", "--models", GRID["models"], "--attacks",
             GRID["attacks"], "--eps", "linf=0.1,0.3", "--n", str(GRID["n"]), "--seed",
             str(GRID["seed"]), "--executor", "ray", "--ray-address", address, "--results",
             str(rec), "--no-progress"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        cells = rec / "custom.cells.jsonl"
        while driver.poll() is None and not (cells.is_file() and cells.read_text().strip()):
            time.sleep(0.2)  # the first cell is recorded: tasks are running on both nodes
        os.kill(joined.pop(), signal.SIGKILL)
        out, _ = driver.communicate(timeout=600)
        seconds = time.monotonic() - t0
        # a driver whose token is not the head's is refused in one line that names the token
        stranger = base / "stranger"
        (stranger / ".ray").mkdir(parents=True)
        (stranger / ".ray" / "auth_token").write_text("not-the-heads-token-0123456789abcdef")
        refused = subprocess.run(
            [sys.executable, "-m", "bench", "run", "--models", "digits-mlp5x100-ref",
             "--attacks", "fgsm", "--eps", "0.1", "--n", "20", "--executor", "ray",
             "--ray-address", address, "--results", str(base / "rec2"), "--no-progress"],
            env={**env, "HOME": str(stranger)}, cwd=ROOT, capture_output=True, text=True,
            timeout=300)
    finally:
        ray_cmd("stop", "--force")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert len(errors) == 1 and "auth_token" in errors[0], refused.stderr[-2000:]
    lines = cells.read_text().splitlines()
    got = {r.key: (r.status, tuple(r.robust), tuple(r.clean_correct))
           for r in results.load("custom", root=rec).itertuples()}
    shutil.rmtree(base, ignore_errors=True)
    assert driver.returncode == 0, out[-3000:]
    assert len(lines) == len(got) == 20, out[-3000:]  # each cell once
    assert got == per_sample(local_run)
    print(f"cluster run with a killed node: {seconds:.0f} s")
