"""One registry type for every extension point: model families, quantization methods,
engine backends, exporters and remote-cache schemes.

A registry maps a name to a value. Built-ins are registered explicitly, or as loaders
that import their module only when the name is looked up (a family module costs a
tenth of a no-op build; a backend pulls in onnx or TensorRT). Third parties arrive
through the ``trtllm_forge.plugins`` entry points (plugin_hooks.py), read only when a
lookup misses the built-ins, so a broken plugin cannot break what forge does on its
own. A name registered twice is refused; a miss names every valid name, and a close
one when it looks like a typo.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from trtllm_forge.errors import ExitCode, ForgeError, recipe_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> ``T`` with deferred built-ins, plugins on a miss, and loud misses.

    ``kind`` is what a plugin's hook reads to pick the registries it serves; ``what``
    names one entry in messages ("exporter", "backend"). Subclasses word a miss their
    own way (:meth:`unknown`) or serve one without an entry (:meth:`fallback`).
    """

    def __init__(
        self,
        kind: str,
        what: str,
        *,
        plugin_group: str | None = None,
        deferred: Mapping[str, Callable[[], T]] | None = None,
    ) -> None:
        self.kind = kind
        self.what = what
        self._entries: dict[str, T] = {}
        self._deferred = dict(deferred or {})  # name -> the loader importing its module
        self._plugin_group = plugin_group
        self._plugins_loaded = plugin_group is None

    def add(self, name: str, value: T) -> T:
        """Register ``value`` under ``name``; another value already there is refused."""
        existing = self._entries.get(name) or self._load_deferred(name)
        if existing is not None and existing is not value:
            raise ForgeError(
                ExitCode.RECIPE,
                f"{self.what} {name!r} is registered twice "
                f"({_label(existing)} and {_label(value)})",
                hint="uninstall one of the plugins that provide it",
            )
        self._entries[name] = value
        return value

    def names(self) -> list[str]:
        """Every valid name, the plugins' included."""
        self._load_plugins()
        return sorted(self._entries.keys() | self._deferred.keys())

    def knows(self, name: str) -> bool:
        """``name in names()``, reading plugins only when no built-in has it."""
        return name in self._entries or name in self._deferred or name in self.names()

    def find(self, name: str) -> T | None:
        """The entry for ``name``: a built-in first, then the plugins'; None if none."""
        found = self._entries.get(name) or self._load_deferred(name)
        if found is None:
            self._load_plugins()
            found = self._entries.get(name)
        return found

    def get(self, name: str) -> T:
        found = self.find(name)
        if found is None:
            found = self.fallback(name)
        if found is None:
            raise self.unknown(name)
        return found

    def fallback(self, name: str) -> T | None:
        """What serves a name nothing registered (remote schemes: fsspec's protocols)."""
        return None

    def unknown(self, name: str) -> ForgeError:
        """The error for a name nobody serves: the valid names, and a close one."""
        import difflib  # only a miss needs it

        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        maybe = f" (did you mean {close[0]}?)" if close else ""
        return recipe_error(
            f"unknown {self.what} {name!r}{maybe}",
            hint=f"known {self.what}s: {', '.join(names) or 'none'}",
        )

    def _load_deferred(self, name: str) -> T | None:
        load = self._deferred.pop(name, None)
        if load is None:
            return None
        value = load()
        self._entries[name] = value
        return value

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from trtllm_forge.plugin_hooks import load_plugin_hooks

        load_plugin_hooks(self, self._plugin_group or "")


def _label(value: object) -> str:
    """A registered value's name for messages: a function's or a class's own name, else
    its type's."""
    name = getattr(value, "__name__", None)
    return name if isinstance(name, str) else type(value).__name__
