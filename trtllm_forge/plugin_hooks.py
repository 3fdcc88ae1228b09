"""Calling the ``trtllm_forge.plugins`` entry points for one registry.

Each entry point is a callable taking a registry; a plugin package serving several
registries (models, remotes, exporters) checks ``registry.kind`` and registers only
into the ones it serves. Hooks run only when a lookup misses the built-ins, so a
broken plugin cannot break what forge does on its own.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError

PLUGIN_GROUP = "trtllm_forge.plugins"


def load_plugin_hooks(registry: Any, group: str = PLUGIN_GROUP) -> None:
    for entry_point in entry_points_in(group):
        try:
            hook = entry_point.load()
            hook(registry)
        except ForgeError:
            raise
        except Exception as exc:  # a third-party plugin failing is the user's environment
            raise ForgeError(
                ExitCode.DEPENDENCY,
                f"plugin {entry_point.name!r} ({group}) failed to load: {exc}",
                hint="fix or uninstall the plugin package",
            ) from exc


def entry_points_in(group: str) -> Iterable[Any]:
    """The entry points installed distributions declare in ``group``, as
    ``importlib.metadata.entry_points(group=group)`` finds them.

    importlib.metadata parses every distribution's entry_points.txt to answer, and a
    `forge` run may ask (a registry miss: an architecture, exporter or remote scheme no
    built-in serves), so the cost grew with the venv. Here only the files that name the group are parsed;
    the first distribution of a name on sys.path hides later ones, as there.
    """
    from importlib.metadata import PathDistribution

    header = f"[{group}]".encode()
    found: list[Any] = []
    seen: set[str] = set()
    for folder in _distribution_folders():
        name = _normalized_name(os.path.basename(folder))
        if name in seen:
            continue
        seen.add(name)
        try:
            with open(os.path.join(folder, "entry_points.txt"), "rb") as declared:
                named = header in declared.read()
        except OSError:
            continue
        if named:
            found.extend(PathDistribution(Path(folder)).entry_points.select(group=group))
    return found


def _distribution_folders() -> Iterator[str]:
    """Every ``*.dist-info`` / ``*.egg-info`` folder on sys.path, in path order."""
    for entry in sys.path:
        try:
            children = list(os.scandir(entry or "."))
        except OSError:  # a missing folder or a zip file: no folders of metadata here
            continue
        for child in children:
            if child.name.endswith((".dist-info", ".egg-info")) and child.is_dir():
                yield child.path


def _normalized_name(folder: str) -> str:
    """``Foo.Bar-1.0.dist-info`` → ``foo_bar`` (the name importlib.metadata compares)."""
    stem = folder.rpartition(".")[0]
    return re.sub(r"[-_.]+", "_", stem.partition("-")[0]).lower()
