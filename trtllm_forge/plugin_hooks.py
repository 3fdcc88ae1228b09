"""Calling the ``trtllm_forge.plugins`` entry points for one registry.

Each entry point is a callable taking a registry; a plugin package serving several
registries (models, remotes, exporters) checks ``registry.kind`` and registers only
into the ones it serves. Hooks run only when a lookup misses the built-ins, so a
broken plugin cannot break what forge does on its own.
"""

from __future__ import annotations

from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError

PLUGIN_GROUP = "trtllm_forge.plugins"


def load_plugin_hooks(registry: Any, group: str = PLUGIN_GROUP) -> None:
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=group):
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
