"""Per-key inter-process locks.

``fcntl.flock`` is released by the kernel when its holder dies, so a lock left
by a killed build can never block the next one ("stale lock recovery" is free).
The lock file records the holder's pid for ``forge cache ls`` diagnostics only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trtllm_forge.errors import store_error


@contextmanager
def key_lock(path: Path, *, timeout_s: float, on_wait: object = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields True if we had to wait for it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise store_error(
            f"{'out of disk space while creating' if full else 'cannot create'} lock {path}: {exc.strerror}",
            hint="free space under FORGE_HOME (`forge cache gc`)"
            if full
            else "check FORGE_HOME and its permissions",
        ) from None
    waited = False
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not waited and callable(on_wait):
                on_wait()
            waited = True
            if time.monotonic() > deadline:
                raise store_error(
                    f"timed out after {timeout_s:.0f}s waiting for lock {path.name}",
                    hint="another forge build holds it; raise FORGE_LOCK_TIMEOUT or wait",
                )
            time.sleep(0.05)
        with contextlib.suppress(
            OSError
        ):  # the pid is for diagnostics; a full disk must not fail here
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield waited
    finally:
        os.close(fd)  # closing the descriptor releases the flock
