"""Fault injection at named points, for the crash-safety tests.

Instrumented code calls ``point("store.commit.convert.before_rename")`` at
places where a crash would be interesting. Nothing happens unless the
environment asks for it (read once per process, on the first call):

- ``FORGE_FAULT=<name>[:<nth>]``: on the ``nth`` (default 1st) time this
  process reaches point ``name``, it SIGKILLs itself — a real kill, so no
  ``finally`` block, ``atexit`` hook or buffered write runs, exactly like an
  OOM kill or a pulled plug (minus the page cache).
- ``FORGE_FAULT_ACTION=stop``: SIGSTOP instead, so a test can hold the
  process (and its locks) at that point and later SIGCONT or SIGKILL it.
- ``FORGE_FAULT_LIST=<file>``: append one line per point reached (its name),
  so a harness can enumerate every point a build passes and in what order.

With neither variable set, ``point()`` is one global lookup and a return.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

_UNSET = object()
_config: object = _UNSET  # None when inactive, else _Config
_counts: dict[str, int] = {}


class _Config:
    def __init__(self, target: str | None, nth: int, action: int, list_file: str | None) -> None:
        self.target = target
        self.nth = nth
        self.action = action
        self.list_file = list_file


def _parse(env: Mapping[str, str]) -> _Config | None:
    spec = env.get("FORGE_FAULT") or None
    list_file = env.get("FORGE_FAULT_LIST") or None
    if spec is None and list_file is None:
        return None
    target, nth = spec, 1
    if spec is not None:
        name, sep, count = spec.rpartition(":")
        if sep and count.isdigit():
            target, nth = name, max(1, int(count))
    action = signal.SIGSTOP if env.get("FORGE_FAULT_ACTION") == "stop" else signal.SIGKILL
    return _Config(target, nth, action, list_file)


def reset(env: Mapping[str, str] | None = None) -> None:
    """Re-read the configuration (tests that drive points in-process)."""
    global _config
    _config = _parse(os.environ if env is None else env)
    _counts.clear()


def point(name: str) -> None:
    """A place where the crash tests may kill this process."""
    if _config is None:
        return
    if _config is _UNSET:
        reset()
        if _config is None:
            return
    _hit(name)


def _hit(name: str) -> None:
    config = _config
    assert isinstance(config, _Config)
    if config.list_file is not None:
        _append(config.list_file, name)
    if name != config.target:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == config.nth:
        os.kill(os.getpid(), config.action)


def _append(path: str, name: str) -> None:
    # One O_APPEND write per line: lines from concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)
