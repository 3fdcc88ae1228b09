"""The root `forge` group, which loads a command's module only when it runs.

Building every command up front made each start pay for all of them: typer inspects
every command's signature and parameter types, and their modules import what they use. `forge --help` lists the commands from
:data:`~trtllm_forge.cli.common.SUMMARIES` instead, so it loads none of them either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import typer
import typer.core
import typer.main

from trtllm_forge.cli.common import SUMMARIES

GROUPS = frozenset({"recipe", "cache", "export"})  # names of sub-groups, not commands


def _build() -> typer.Typer:
    from trtllm_forge.cli import build

    return build.app


def _quantize() -> typer.Typer:
    from trtllm_forge.cli import quantize

    return quantize.app


def _inspect() -> typer.Typer:
    from trtllm_forge.cli import inspect

    return inspect.app


def _bench() -> typer.Typer:
    from trtllm_forge.cli import bench

    return bench.app


def _recipe() -> typer.Typer:
    from trtllm_forge.cli import recipe

    return recipe.app


def _cache() -> typer.Typer:
    from trtllm_forge.cli import cache

    return cache.app


def _export() -> typer.Typer:
    from trtllm_forge.cli import export

    return export.app


# Deferred imports, one function per module, not module names in strings: the import
# graph check (tools/import_layers.py) sees every dependency.
LOADERS: dict[str, Callable[[], typer.Typer]] = {
    "build": _build,
    "plan": _build,
    "quantize": _quantize,
    "inspect": _inspect,
    "bench": _bench,
    "run": _bench,
    "recipe": _recipe,
    "cache": _cache,
    "export": _export,
}


def make_command(name: str) -> Any:
    """The click command (or sub-group) ``name``, built from its module's typer app."""
    group = typer.main.get_group(LOADERS[name]())
    return group if name in GROUPS else group.commands[name]


class _Commands(MutableMapping[str, Any]):
    """The root group's commands by name, each built on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._made:
            if name not in LOADERS:
                raise KeyError(name)
            self._made[name] = make_command(name)
        return self._made[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._made[name] = command

    def __delitem__(self, name: str) -> None:
        del self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*SUMMARIES, *self._made]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*SUMMARIES, *self._made]))


class LazyGroup(typer.core.TyperGroup):
    """typer's group, with commands loaded by name and listed from :data:`SUMMARIES`."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(SUMMARIES.items()))
