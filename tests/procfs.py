"""Linux /proc helpers shared by the tests that kill processes (imported as ``procfs``: pytest
puts ``tests/`` on the path)."""

from __future__ import annotations

from pathlib import Path


def cmdline(pid: int | str) -> bytes:
    """Process ``pid``'s command line as /proc gives it (NUL-separated), or ``b""`` once it is
    gone or unreadable."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
