"""What every `forge` command shares: option types, the one error renderer, JSON output.

Exit codes: 0 ok · 1 internal error · 2 bad recipe/arguments · 3 verify gate
failed · 4 missing dependency/hardware · 5 source unavailable · 6 cache/store.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from trtllm_forge.errors import ExitCode, ForgeError

T = TypeVar("T")

# What `forge --help` lists, in this order; each command declares its summary from here
# (a command's ``short_help``, a group's ``help``), so the two cannot disagree.
SUMMARIES = {
    "build": "Run every stage of RECIPE that is not already cached.",
    "plan": "Show which stages of RECIPE are cached, and what changed if not.",
    "quantize": "Quantize MODEL once and write a TensorRT-LLM checkpoint.",
    "inspect": "Describe an engine, a checkpoint or any artifact.",
    "bench": "Time TARGET: latency percentiles, tokens/s and peak memory.",
    "run": "Generate from TARGET (greedy) and stream the text.",
    "recipe": "Validate, show and export the schema of recipes.",
    "cache": "List, size, verify and clean the artifact store ($FORGE_HOME).",
    "export": "Export artifacts for other tools.",
}

# -v / FORGE_DEBUG, set by the root callback before any command body runs.
STATE = {"verbose": False}

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress display.")]
StageOpt = Annotated[
    str | None,
    typer.Option(
        "--until", help="Stop after this stage (fetch, convert, calibrate, build, verify)."
    ),
]
OverwriteDestOpt = Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty DEST.")]


def render_error(err: ForgeError) -> None:
    """The one text form of a user-facing error, on stderr: ``error: [where: ]message``
    and, only when there is one, ``  hint: …`` under it."""
    from rich.text import Text

    from trtllm_forge.ui import stderr_console

    console = stderr_console()
    where = f"{err.location}: " if err.location else ""
    # Text, not markup: a message or hint holding "[...]" is printed as written.
    console.print(Text.assemble(("error", "bold red"), f": {where}{err.message}"), soft_wrap=True)
    if err.hint:
        console.print(Text.assemble("  ", ("hint", "dim"), f": {err.hint}"), soft_wrap=True)


def fail(err: ForgeError, as_json: bool) -> NoReturn:
    """Report ``err`` (a JSON document under --json, else :func:`render_error`) and exit
    with its code."""
    if as_json:
        print_json({"ok": False, "error": err.to_dict()})
    else:
        render_error(err)
    raise typer.Exit(int(err.code))


def finish(doc: dict[str, Any], error: ForgeError | None) -> None:
    """Print a --json document that carries ``error`` when there is one, then exit with
    its code (a failed gate or damaged cache still has a report to show)."""
    doc = {"ok": error is None, **doc}
    if error is not None:
        doc["error"] = error.to_dict()
    print_json(doc)
    if error is not None:
        raise typer.Exit(int(error.code))


def guard(fn: Callable[[], T], as_json: bool = False) -> T:
    """Run a command body: ForgeError → message + exit code; a bug → exit 1."""
    try:
        return fn()
    except ForgeError as err:
        _traceback_if_verbose()
        fail(err, as_json)
    except KeyboardInterrupt:
        print("forge: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a library's failure (exit 4) or a bug: traceback only when asked
        _traceback_if_verbose()
        from trtllm_forge.thirdparty import library_error

        failure = library_error(exc, "running this command")
        if failure is not None:
            fail(failure, as_json)
        internal = ForgeError(
            ExitCode.INTERNAL,
            f"internal error: {type(exc).__name__}: {exc}",
            hint="this is a bug in forge; rerun with -v (or FORGE_DEBUG=1) for a traceback "
            "and report it",
        )
        fail(internal, as_json)


def _traceback_if_verbose() -> None:
    if STATE["verbose"]:
        import traceback

        traceback.print_exc()


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def human(n: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def console(*, wide_when_piped: bool = False) -> Any:
    """A stdout console for tables (``wide_when_piped``: a pipe or file gets room for
    every column instead of rich's 80)."""
    from rich.console import Console

    out = Console(soft_wrap=True)
    if wide_when_piped and not out.is_terminal:
        out = Console(soft_wrap=True, width=160)
    return out
