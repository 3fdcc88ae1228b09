"""Append-only event log: ``$FORGE_HOME/log/events.jsonl``.

One JSON object per line, one line per stage event (``start``, ``commit``,
``hit``, ``wait``, ``rejected``, ``failed``) with the pid, stage and key, so anyone can
answer "who built what, when, and how often" after the fact — e.g. that four
concurrent builds of one recipe ran each stage once.

Each line is a single ``write()`` on an ``O_APPEND`` descriptor, so lines from
concurrent processes never interleave. Logging is best effort: a full disk
fails the build through the store, never through its log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

LOG_DIR = "log"
EVENTS = "events.jsonl"


def events_path(root: Path) -> Path:
    return root / LOG_DIR / EVENTS


def record(root: Path, event: str, stage: str, key: str, **extra: Any) -> None:
    line = {
        "ts": round(time.time(), 6),
        "pid": os.getpid(),
        "event": event,
        "stage": stage,
        "key": key,
        **extra,
    }
    data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
    path = events_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_events(root: Path) -> list[dict[str, Any]]:
    """Every well-formed line (a torn last line from a killed writer is skipped)."""
    try:
        text = events_path(root).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out
