"""bench/measure.py: the peak memory it reports is the child's own, and a failed command
says what it printed. Real child processes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench import measure

MB = 2**20
# The child holds 200 MiB for half a second, long enough for the /proc sampler to see it.
CHILD = "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(0.5)"


def test_a_big_parent_does_not_lend_the_child_its_peak() -> None:
    """Linux carries the parent's memory into a child's ru_maxrss across exec: with 1.5 GiB
    resident here, a child of ~220 MiB must not report 1.5 GiB."""
    held = np.ones(1536 * MB // 8)  # touched: resident in this process at the spawn
    result = measure.run([sys.executable, "-c", CHILD])
    assert held.sum() > 0
    assert 200 * MB <= result.max_rss_bytes < 1024 * MB


def test_a_failed_command_shows_its_stdout_when_stderr_is_empty() -> None:
    """A ``--json`` command puts its refusal on stdout (forge plan's exit 4)."""
    code = 'print(\'{"ok": false, "message": "will not fit"}\'); raise SystemExit(4)'
    with pytest.raises(RuntimeError, match="exited 4:\n.*will not fit"):
        measure.run([sys.executable, "-c", code])
