"""What produced a record: library versions, hardware, commit and time."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from zoo import kernels

PACKAGES = ("torch", "torchvision", "foolbox", "pyautoattack", "brevitas", "numpy", "pandas",
            "qbench")


@functools.cache
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    commit = git_commit()
    if commit:
        out["qbench_commit"] = commit
    return out


@functools.cache
def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def hardware(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    return (f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{kernels.in_force()})")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def host() -> str:
    """The name of the machine computing a record."""
    return socket.gethostname()


def stamp(device: str, *, with_host: bool = True) -> dict[str, object]:
    """What every record says of how it was made: library versions, hardware, UTC time, and
    (for cells) the machine's name."""
    out: dict[str, object] = {"versions": versions(), "hardware": hardware(device),
                              "created": now()}
    if with_host:
        out["host"] = host()
    return out
