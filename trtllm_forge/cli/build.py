"""`forge build` and `forge plan`: run or preview a recipe's stages, and their tables."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trtllm_forge.cli.common import (
    SUMMARIES,
    JsonOpt,
    QuietOpt,
    RecipeArg,
    StageOpt,
    console,
    finish,
    guard,
    print_json,
    render_error,
)
from trtllm_forge.errors import ExitCode, ForgeError

app = typer.Typer(rich_markup_mode=None)

ForceOpt = Annotated[
    list[str] | None,
    typer.Option("--force", help="Rebuild this stage even if cached (repeatable)."),
]


@app.command(short_help=SUMMARIES["build"])
def build(
    recipe: RecipeArg,
    until: StageOpt = None,
    force: ForceOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every stage of RECIPE that is not already cached.

    Each stage's artifact is stored under a digest of exactly what produced it,
    so a rerun redoes only what changed. Exit 3 if a verify gate fails.
    """
    from trtllm_forge import api
    from trtllm_forge.context import RunContext
    from trtllm_forge.ui import make_progress

    def body() -> None:
        ctx = RunContext.default()
        results: list[Any] = []

        def done(result: Any) -> None:
            results.append(result)
            ctx.progress.log(_result_line(result))

        with make_progress(quiet) as progress:
            ctx.progress = progress
            try:
                api.build(recipe=recipe, until=until, force=force or [], ctx=ctx, on_result=done)
            except ForgeError as err:
                if err.code != ExitCode.GATE:
                    raise
                # A failed gate still produced a report: show it, then exit 3.
                _show_build(results, as_json, error=err)
                raise typer.Exit(int(err.code)) from None
        _show_build(results, as_json)

    guard(body, as_json)


@app.command(short_help=SUMMARIES["plan"])
def plan(recipe: RecipeArg, until: StageOpt = None, as_json: JsonOpt = False) -> None:
    """Show which stages of RECIPE are cached and, for a miss, what changed since its last build."""
    from trtllm_forge import api
    from trtllm_forge.api.estimate import plan_estimate
    from trtllm_forge.context import RunContext

    def body() -> None:
        ctx = RunContext.default()
        results = api.plan(recipe=recipe, until=until, ctx=ctx)
        if not as_json:
            _results_table(results, title="forge plan", plan=True)
        # Exit 4 with the numbers when the stages to run cannot fit this machine.
        estimate = plan_estimate(recipe=recipe, results=results, ctx=ctx)
        if as_json:
            stages = [r.to_json() for r in results]
            print_json({"ok": True, "stages": stages, "estimate": estimate.to_json()})
        else:
            _estimate_table(estimate.to_json())

    guard(body, as_json)


def _estimate_table(estimate: dict[str, Any]) -> None:
    """Disk, host and GPU memory the stages to run need, against this machine."""
    from rich.table import Table

    out = console()
    if estimate["model"] is None:
        out.print("estimate: no size of the model on this machine yet (forge build --until fetch)")
        return
    table = Table(title="estimate (the stages to run)")
    for col in ("resource", "needs", "stage", "available", "fits"):
        table.add_column(col)
    labels = {"disk": "disk under FORGE_HOME", "host": "host memory", "device": "GPU memory"}
    for kind, row in estimate["needs"].items():
        if kind == "device" and not row["bytes"]:
            continue  # no stage to run uses a GPU
        have = row["available"]
        shown = (
            "unknown"
            if have is None
            else f"{have / 1e9:.2f} GB" + (" (cap)" if row["capped"] else "")
        )
        fits = "-" if have is None else ("[green]yes[/]" if row["bytes"] <= have else "[red]no[/]")
        stages = ", ".join(f"{s} {b / 1e9:.2f}" for s, b in row["per_stage"].items() if b)
        where = stages if kind == "disk" else (row["stage"] or "-")
        table.add_row(labels[kind], f"{row['bytes'] / 1e9:.2f} GB", where, shown, fits)
    out.print(table)


def _show_build(results: list[Any], as_json: bool, error: ForgeError | None = None) -> None:
    verify = next((r for r in results if r.stage == "verify"), None)
    if as_json:
        doc: dict[str, Any] = {"stages": [r.to_json() for r in results]}
        if verify is not None:
            doc["verify"] = verify.info
        finish(doc, error)
        return
    _results_table(results, title="forge build")
    if verify is not None and verify.info.get("metrics"):
        _verify_table(verify)
    if error is not None:
        render_error(error)


def _verify_table(verify: Any) -> None:
    from rich.table import Table

    from trtllm_forge.engine.report import verdict

    info = verify.info
    outcome = verdict(passed=bool(info.get("passed")), gated=bool(info.get("gates")))
    colour = {"PASSED": "green", "FAILED": "red"}.get(outcome, "yellow")
    table = Table(title=f"verify: [{colour}]{outcome}[/]")
    for col in ("gate / metric", "value", "threshold", "result"):
        table.add_column(col)
    for name, gate in sorted(info.get("gates", {}).items()):
        mark = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
        table.add_row(name, f"{gate['value']:.6g}", f"{gate['threshold']:g}", mark)
    for metric, value in sorted(info.get("metrics", {}).items()):
        table.add_row(f"[dim]{metric}[/]", f"{value:.6g}", "", "")
    out = console()
    out.print(table)
    reports = info.get("reports") or {}
    if reports and verify.path:
        out.print(f"reports: {verify.path}/{{{','.join(sorted(reports.values()))}}}")


def _result_line(result: Any) -> str:
    from trtllm_forge.store.digest import short

    word = {"hit": "cached", "built": "built", "pulled": "pulled from the remote"}.get(
        result.status, result.status
    )
    extra = f" (changed: {', '.join(result.changed)})" if result.changed else ""
    return f"{result.stage}: {word} in {result.seconds:.2f}s [{short(result.key or '')}]{extra}"


_STATUS_STYLES = {"hit": "green", "built": "cyan", "pulled": "green", "miss": "yellow"}


def _results_table(results: list[Any], *, title: str, plan: bool = False) -> None:
    from rich.table import Table

    from trtllm_forge.store.digest import short

    table = Table(title=title)
    for col in ("stage", "status", "seconds", "key", "changed" if plan else "artifact"):
        table.add_column(col)
    styles = {**_STATUS_STYLES, "pending": "dim"}
    for r in results:
        last = ", ".join(r.changed) or (r.note or "") if plan else (r.path or "")
        table.add_row(
            r.stage,
            f"[{styles.get(r.status, '')}]{r.status}[/]",
            f"{r.seconds:.2f}",
            short(r.key or "") or "-",
            last,
        )
    console().print(table)
