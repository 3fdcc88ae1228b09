"""One bounded reader for the files forge reads on a user's behalf (recipes, configs).

A path a user gives can name anything: ``/dev/zero`` (endless), a FIFO (blocks
forever waiting for a writer), a directory, or a kernel pseudo-file such as
``/proc/self/environ`` (a "regular file" of size 0 holding the process's
environment, tokens included). ``stat().st_size`` is 0 for all of those, so a size
cap based on it limits nothing. This module opens without blocking, checks the
file type on the open descriptor (no window to swap the file), and reads at most
``limit + 1`` bytes. Callers turn :class:`UnsafeFile` into their own ForgeError
category and wording.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Kernel pseudo-file systems: their "regular files" are generated on read. (/dev holds
# devices, which the file-type check refuses, and /dev/shm, which holds real files.)
PSEUDO_ROOTS = ("/proc", "/sys")


class UnsafeFile(Exception):
    """The path is not a regular file forge may read, or is larger than allowed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def pseudo_file_problem(path: Path) -> str | None:
    """Why ``path`` (resolved) is a kernel pseudo-file, or None."""
    resolved = str(Path(path).resolve())
    for root in PSEUDO_ROOTS:
        if resolved == root or resolved.startswith(root + "/"):
            return f"is a kernel pseudo-file (under {root}), not a regular file"
    return None


def read_regular(path: Path, *, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Raises:
        UnsafeFile: a directory, device, FIFO, socket, pseudo-file, or too large.
        OSError: the file is missing or unreadable (FileNotFoundError, PermissionError).
    """
    problem = pseudo_file_problem(path)
    if problem:
        raise UnsafeFile(problem)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UnsafeFile("is a directory")
        if not stat.S_ISREG(mode):
            raise UnsafeFile(f"is not a regular file (a {_kind(mode)})")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnsafeFile(f"is larger than {limit} bytes")
    return data


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"
