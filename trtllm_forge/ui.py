"""Terminal output for the CLI: Rich progress on a TTY, plain lines otherwise.

Only the cli package imports this module; stages report through the Progress protocol.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, TaskHandle

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _RichTask:
    def __init__(self, progress: Progress, task_id: Any) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, amount: float = 1.0) -> None:
        self._progress.advance(self._id, amount)


class RichProgress:
    """Live bars on stderr; nested stage tasks show as separate rows."""

    def __init__(self, console: Console) -> None:
        # Imported here: only a terminal shows bars, and a no-op build pays for every import.
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self._bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def log(self, message: str) -> None:
        self._bars.console.print(f"[dim]·[/dim] {message}")

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[TaskHandle]:
        task_id = self._bars.add_task(description, total=total)
        try:
            yield _RichTask(self._bars, task_id)
        finally:
            self._bars.remove_task(task_id)


class _PlainTask:
    def advance(self, amount: float = 1.0) -> None:
        pass


class PlainProgress:
    """One line per event on stderr, for CI logs and pipes."""

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def log(self, message: str) -> None:
        print(f"forge: {message}", file=sys.stderr, flush=True)  # noqa: T201 (the CLI's log sink)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[TaskHandle]:
        t0 = time.perf_counter()
        self.log(f"{description} ...")
        yield _PlainTask()
        self.log(f"{description} done in {time.perf_counter() - t0:.1f}s")


class QuietProgress(NullProgress):
    """`-q`: nothing on stderr but errors."""

    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def make_progress(quiet: bool) -> RichProgress | PlainProgress | QuietProgress:
    if quiet:
        return QuietProgress()
    if not _may_be_terminal():  # CI logs, --json pipes: plain lines, without loading rich
        return PlainProgress()
    console = stderr_console()
    return RichProgress(console) if console.is_terminal else PlainProgress()


def _may_be_terminal() -> bool:
    """False only when rich would certainly not treat stderr as a terminal."""
    forced = any(os.environ.get(name) for name in ("FORCE_COLOR", "TTY_COMPATIBLE"))
    return forced or sys.stderr.isatty()
