"""Architecture registry: HF ``architectures[0]`` -> :class:`Family`.

Built-in families are registered here explicitly. Third-party families arrive
through the ``trtllm_forge.plugins`` entry-point group: each entry point is a
callable that receives the plugin registries and registers what it brings. The
callable gets this module's :data:`REGISTRY` (``registry.kind == "models"``) so
one plugin package can serve several registries by checking ``kind``. Entry
points are loaded only when a lookup misses the built-ins, so a broken plugin
cannot break conversion of a built-in architecture.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models.base import Family
from trtllm_forge.models.bloom import BloomFamily
from trtllm_forge.models.falcon import FalconFamily
from trtllm_forge.models.gemma import GemmaFamily
from trtllm_forge.models.gemma2 import Gemma2Family
from trtllm_forge.models.gpt2 import Gpt2Family
from trtllm_forge.models.gpt_bigcode import GptBigCodeFamily
from trtllm_forge.models.gpt_neox import GptNeoxFamily
from trtllm_forge.models.gptj import GptjFamily
from trtllm_forge.models.llama import LlamaFamily
from trtllm_forge.models.mpt import MptFamily

PLUGIN_GROUP = "trtllm_forge.plugins"


class FamilyRegistry:
    """Name -> family map with loud misses (the valid names are listed)."""

    kind = "models"

    def __init__(self, *, plugin_group: str | None = PLUGIN_GROUP) -> None:
        self._by_arch: dict[str, Family] = {}
        self._plugin_group = plugin_group
        self._plugins_loaded = plugin_group is None

    def register(self, family: Family) -> Family:
        for arch in family.architectures:
            existing = self._by_arch.get(arch)
            if existing is not None and existing is not family:
                raise ForgeError(
                    ExitCode.RECIPE,
                    f"architecture {arch!r} is registered twice "
                    f"({type(existing).__name__} and {type(family).__name__})",
                    hint="uninstall one of the plugins that provide it",
                )
            self._by_arch[arch] = family
        return family

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._by_arch)

    def get(self, architecture: str) -> Family:
        family = self._by_arch.get(architecture)
        if family is None:
            self._load_plugins()
            family = self._by_arch.get(architecture)
        if family is None:
            raise self._unknown(architecture)
        return family

    def _unknown(self, architecture: str) -> ForgeError:
        names = sorted(self._by_arch)
        close = difflib.get_close_matches(architecture, names, n=1)
        maybe = f" (did you mean {close[0]}?)" if close else ""
        return ForgeError(
            ExitCode.SOURCE,
            f"unknown model architecture {architecture!r}{maybe}",
            hint=f"supported architectures: {', '.join(names)}; more can be added through a "
            f"'{PLUGIN_GROUP}' entry point",
        )

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry_point in _entry_points(self._plugin_group or ""):
            self._run_plugin(entry_point.name, entry_point.load)

    def _run_plugin(self, name: str, load: Callable[[], Any]) -> None:
        try:
            hook = load()
            hook(self)
        except ForgeError:
            raise
        except Exception as exc:  # a third-party plugin failing is the user's environment
            raise ForgeError(
                ExitCode.DEPENDENCY,
                f"plugin {name!r} ({PLUGIN_GROUP}) failed to load: {exc}",
                hint="fix or uninstall the plugin package",
            ) from exc


def _entry_points(group: str) -> Iterable[Any]:
    from importlib.metadata import entry_points

    return entry_points(group=group)


REGISTRY = FamilyRegistry()
REGISTRY.register(LlamaFamily())
REGISTRY.register(FalconFamily())
REGISTRY.register(BloomFamily())
REGISTRY.register(MptFamily())
REGISTRY.register(Gpt2Family())
REGISTRY.register(GptNeoxFamily())
REGISTRY.register(GptBigCodeFamily())
REGISTRY.register(GptjFamily())
REGISTRY.register(GemmaFamily())
REGISTRY.register(Gemma2Family())


def family_for(hf_config: Mapping[str, Any], registry: FamilyRegistry = REGISTRY) -> Family:
    """The family converting this HF config (by ``architectures[0]``), validated."""
    archs = hf_config.get("architectures") or []
    if not archs:
        raise ForgeError(
            ExitCode.SOURCE,
            "config.json has no 'architectures' entry",
            hint=f'add e.g. "architectures": ["LlamaForCausalLM"]; supported: '
            f"{', '.join(registry.names())}",
        )
    family = registry.get(str(archs[0]))
    family.validate(hf_config)
    return family
