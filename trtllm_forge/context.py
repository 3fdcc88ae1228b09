"""Run context passed explicitly to every stage: settings and a progress sink.

Stages never import ``rich`` and never print; they report through
:class:`Progress`. The CLI picks a Rich implementation on a TTY and a plain
log otherwise; tests use :class:`NullProgress`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class Progress(Protocol):
    def log(self, message: str) -> None: ...

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[TaskHandle]: ...


class TaskHandle(Protocol):
    def advance(self, amount: float = 1.0) -> None: ...


class _NullTask:
    def advance(self, amount: float = 1.0) -> None:
        pass


class NullProgress:
    """Discards everything (library use and tests)."""

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[TaskHandle]:
        yield _NullTask()


@dataclass(frozen=True)
class Settings:
    """Environment-derived settings, read when constructed (never at import)."""

    home: Path
    lock_timeout_s: float = 3600.0
    remote: str | None = None  # FORGE_REMOTE: the shared cache (docs/ci.md)
    remote_push: bool = True  # FORGE_REMOTE_PUSH=0: pull only (e.g. untrusted PR builds)
    # HF_TOKEN: the hub token fetch passes to huggingface_hub (None lets huggingface_hub
    # look for one itself). Kept out of repr so a logged Settings never shows it.
    hf_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            home=forge_home(),
            lock_timeout_s=_seconds_setting("FORGE_LOCK_TIMEOUT", "3600"),
            remote=os.environ.get("FORGE_REMOTE") or None,
            remote_push=os.environ.get("FORGE_REMOTE_PUSH", "1") not in ("0", "false", "no"),
            hf_token=os.environ.get("HF_TOKEN") or None,
        )


def forge_home() -> Path:
    """``$FORGE_HOME`` (default ``~/.cache/forge``), absolute."""
    home = os.environ.get("FORGE_HOME") or str(Path.home() / ".cache" / "forge")
    return Path(home).expanduser().resolve()


def _seconds_setting(name: str, default: str) -> float:
    """A non-negative number of seconds from the environment; anything else is a bad
    setting (exit 2), not a crash deep inside the first lock wait."""
    import math

    from trtllm_forge.errors import recipe_error

    text = os.environ.get(name) or default  # empty means unset, as for FORGE_HOME
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise recipe_error(
            f"{name}={text!r} is not a number of seconds",
            hint=f"set {name} to a non-negative number (e.g. {default}) or unset it",
        )
    return value


@dataclass
class RunContext:
    settings: Settings
    progress: Progress = field(default_factory=NullProgress)

    @classmethod
    def default(cls) -> RunContext:
        return cls(settings=Settings.from_env())
