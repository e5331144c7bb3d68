"""The noxfile's install step, with the real nox and pip on a tiny probe project: pip runs
once per pyproject.toml and extras, and a rerun skips it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOX = shutil.which("nox")

PROBE_NOXFILE = """
import importlib.util

import nox

spec = importlib.util.spec_from_file_location("qbench_noxfile", {noxfile!r})
qbench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qbench)


@nox.session(venv_backend="venv")
def probe(session):
    qbench.install(session, "extra")
    session.run("python", "-c", "import stamp_probe")
"""

PROBE_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "stamp-probe"
version = "0"

[project.optional-dependencies]
extra = []
"""


def _nox(cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "NOX"))}
    done = subprocess.run([NOX, "-s", "probe"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.skipif(NOX is None, reason="nox is not on PATH (CI runs the tests through nox)")
def test_install_runs_pip_once_per_pyproject(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text(PROBE_NOXFILE.format(noxfile=str(ROOT / "noxfile.py")))
    (tmp_path / "pyproject.toml").write_text(PROBE_PYPROJECT)
    (tmp_path / "stamp_probe").mkdir()
    (tmp_path / "stamp_probe" / "__init__.py").write_text("")

    first = _nox(tmp_path)
    assert "pip install -e '.[extra]'" in first
    stamp = next((tmp_path / ".nox").glob("probe/qbench-installed.txt")).read_text()
    assert stamp.endswith(" [extra]")

    again = _nox(tmp_path)  # nothing changed: no pip run, the project still imports
    assert "pip install" not in again
    assert "pip skipped" in again

    with (tmp_path / "pyproject.toml").open("a") as f:  # a changed pyproject installs anew
        f.write("# changed\n")
    changed = _nox(tmp_path)
    assert "pip install -e '.[extra]'" in changed
    assert next((tmp_path / ".nox").glob("probe/qbench-installed.txt")).read_text() != stamp
