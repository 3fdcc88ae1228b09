"""The one error type users see, and the exit-code table.

Library code raises :class:`ForgeError`; only the CLI (``cli/common.py``) renders it. Anything
else that escapes is a bug (exit 1) and is shown with a traceback only under
``-v`` / ``FORGE_DEBUG=1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in forge
    RECIPE = 2  # bad recipe or bad arguments
    GATE = 3  # a verify gate failed
    DEPENDENCY = 4  # missing dependency or hardware (TensorRT, GPU, modelopt)
    SOURCE = 5  # source unavailable (hub, file)
    STORE = 6  # cache/store problem (lock timeout, disk full, corrupt entry)


@dataclass(frozen=True)
class Location:
    """Where in a recipe file an error points: ``file:line:col`` (1-based)."""

    file: str
    line: int
    col: int
    field: str | None = None  # dotted recipe path, e.g. ``parallel.tp``

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.field}" if self.field else where


class ForgeError(Exception):
    """A user-facing failure: what went wrong, how to fix it, and where.

    Args:
        code: exit-code category.
        message: one line saying what went wrong.
        hint: one line saying what to do about it (optional but expected).
        location: recipe position the error refers to, if any.
    """

    def __init__(
        self,
        code: ExitCode,
        message: str,
        *,
        hint: str | None = None,
        location: Location | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ExitCode(code)
        self.message = message
        self.hint = hint
        self.location = location

    def to_dict(self) -> dict[str, object]:
        loc = self.location
        return {
            "code": int(self.code),
            "kind": self.code.name.lower(),
            "message": self.message,
            "hint": self.hint,
            "location": None
            if loc is None
            else {"file": loc.file, "line": loc.line, "col": loc.col, "field": loc.field},
        }

    def __str__(self) -> str:
        head = f"{self.location}: {self.message}" if self.location else self.message
        return head if not self.hint else f"{head}\n  hint: {self.hint}"


def recipe_error(
    message: str, *, hint: str | None = None, location: Location | None = None
) -> ForgeError:
    return ForgeError(ExitCode.RECIPE, message, hint=hint, location=location)


def source_error(
    message: str, *, hint: str | None = None, location: Location | None = None
) -> ForgeError:
    return ForgeError(ExitCode.SOURCE, message, hint=hint, location=location)


def dependency_error(message: str, *, hint: str | None = None) -> ForgeError:
    return ForgeError(ExitCode.DEPENDENCY, message, hint=hint)


def store_error(message: str, *, hint: str | None = None) -> ForgeError:
    return ForgeError(ExitCode.STORE, message, hint=hint)
