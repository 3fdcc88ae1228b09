"""`forge cache ls|du|verify|gc|rm|push|pull`: the artifact store, through the api."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trtllm_forge.cli.common import SUMMARIES, JsonOpt, console, finish, guard, human, print_json

app = typer.Typer(
    name="cache",
    help=SUMMARIES["cache"],
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("ls")
def cache_ls(
    remote: Annotated[
        bool, typer.Option("--remote", help="List the entries on FORGE_REMOTE instead.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List every artifact: stage, key, size, validity and the recipes using it."""
    from trtllm_forge import api

    def body() -> None:
        if remote:
            _remote_ls(as_json)
            return
        found = api.cache_entries()
        if as_json:
            print_json({"ok": True, "artifacts": [e.to_json() for e in found]})
            return
        from rich.table import Table

        from trtllm_forge.store.digest import short

        table = Table(title=f"forge store: {api.store().root}")
        for col in ("stage", "key", "size", "state", "used by"):
            table.add_column(col)
        for e in found:
            state = "ok" if e.problem is None else f"[red]damaged[/]: {e.problem}"
            table.add_row(e.stage, short(e.key), human(e.size), state, ", ".join(e.recipes))
        console().print(table)

    guard(body, as_json)


@app.command("du")
def cache_du(as_json: JsonOpt = False) -> None:
    """Disk usage of the store per stage."""
    from trtllm_forge import api

    def body() -> None:
        sizes = api.cache_usage()
        if as_json:
            print_json({"ok": True, "bytes": sizes, "total": sum(sizes.values())})
            return
        for stage, size in sizes.items():
            print(f"{human(size):>10}  {stage}")
        print(f"{human(sum(sizes.values())):>10}  total")

    guard(body, as_json)


@app.command("verify")
def cache_verify(
    fix: Annotated[bool, typer.Option("--fix", help="Delete damaged entries.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-check every artifact against its manifest digests (exit 6 if any is damaged)."""
    from trtllm_forge import api
    from trtllm_forge.errors import store_error

    def body() -> None:
        report = api.cache_verify(fix=fix)
        bad = report["damaged"]
        error = None
        if bad and not fix:
            error = store_error(
                f"{len(bad)} damaged artifact(s) in the store",
                hint="run `forge cache verify --fix` to delete them; builds rebuild them",
            )
        if as_json:  # one document, carrying the error when there is one
            damaged = [e.to_json() for e in bad]
            finish({"checked": report["checked"], "damaged": damaged, "fixed": fix}, error)
            return
        for e in bad:
            print(f"damaged: {e.stage} {e.key}: {e.problem}" + (" (removed)" if fix else ""))
        print(f"checked {report['checked']} artifact(s), {len(bad)} damaged")
        if error is not None:
            raise error

    guard(body, as_json)


@app.command("gc")
def cache_gc(
    all_: Annotated[
        bool,
        typer.Option(
            "--all-unreferenced/--damaged-only",
            help="Also delete entries no recipe's last build uses.",
        ),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete damaged entries, leftovers of killed builds and unreferenced artifacts."""
    from trtllm_forge import api

    def body() -> None:
        report = api.cache_gc(unreferenced=all_, dry_run=dry_run)
        if as_json:
            print_json({"ok": True, **report})
            return
        verb = "would delete" if dry_run else "deleted"
        for item in report["removed"]:
            print(f"{verb}: {item.get('stage')} {item['path']}")
        print(f"{verb} {len(report['removed'])} item(s), {human(report['freed_bytes'])} freed")

    guard(body, as_json)


@app.command("rm")
def cache_rm(
    key: Annotated[str | None, typer.Argument(help="Key or key prefix to delete.")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Delete every artifact of this stage.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Delete every artifact.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete artifacts by key prefix, by stage, or all of them."""
    from trtllm_forge import api

    def body() -> None:
        gone = api.cache_rm(key=key, stage=stage, everything=everything)
        if as_json:
            print_json({"ok": True, "removed": [e.to_json() for e in gone]})
        else:
            print(f"deleted {len(gone)} artifact(s)")

    guard(body, as_json)


RemoteTargetArg = Annotated[
    str | None,
    typer.Argument(help="A recipe .yaml, an artifact key (or 4+ hex prefix); default: all."),
]


@app.command("push")
def cache_push(target: RemoteTargetArg = None, as_json: JsonOpt = False) -> None:
    """Upload artifacts to the remote cache (FORGE_REMOTE): files first, manifest last."""
    _move_entries("pushed", target, as_json)


@app.command("pull")
def cache_pull(target: RemoteTargetArg = None, as_json: JsonOpt = False) -> None:
    """Download artifacts from the remote cache, each checked against its manifest."""
    _move_entries("pulled", target, as_json)


def _move_entries(verb: str, target: str | None, as_json: bool) -> None:
    """``cache push`` (verb "pushed") or ``cache pull`` ("pulled"), with progress and a summary."""
    from trtllm_forge import api

    move = api.cache_push if verb == "pushed" else api.cache_pull

    def body() -> None:
        from trtllm_forge.context import RunContext
        from trtllm_forge.ui import make_progress

        ctx = RunContext.default()
        with make_progress(as_json) as progress:
            ctx.progress = progress
            moved = move(target=target, ctx=ctx)
        _show_moved(moved, as_json, verb)

    guard(body, as_json)


def _remote_ls(as_json: bool) -> None:
    from trtllm_forge import api
    from trtllm_forge.context import RunContext
    from trtllm_forge.store.digest import short

    entries = api.cache_remote_entries(ctx=RunContext.default())
    if as_json:
        print_json({"ok": True, "entries": [{"stage": s, "key": k} for s, k in entries]})
        return
    for stage, key in entries:
        print(f"{stage:10} {short(key)}")
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} on the remote")


def _show_moved(moved: list[Any], as_json: bool, verb: str) -> None:
    from trtllm_forge.store.digest import short

    if as_json:
        print_json({"ok": True, "entries": [m.to_json() for m in moved]})
        return
    for m in moved:
        size = f" ({m.files} files, {human(m.bytes)})" if m.files else ""
        note = f": {m.note}" if m.note else ""
        print(f"{m.status:8} {m.stage:10} {short(m.key)}{size}{note}")
    count = sum(1 for m in moved if m.status == verb)
    print(f"{verb} {count} of {len(moved)} entr{'y' if len(moved) == 1 else 'ies'}")
