"""Architecture registry: HF ``architectures[0]`` -> :class:`Family`.

Built-in families are registered here explicitly. Third-party families arrive
through the ``trtllm_forge.plugins`` entry-point group: each entry point is a
callable that receives the plugin registries and registers what it brings. The
callable gets this module's :data:`REGISTRY` (``registry.kind == "models"``) so
one plugin package can serve several registries by checking ``kind``. Entry
points are loaded only when a lookup misses the built-ins, so a broken plugin
cannot break conversion of a built-in architecture.

A built-in family's module is imported only when its architecture is looked up:
every `forge` run looks up one architecture, and importing all families cost about
a tenth of a no-op `forge build` (docs/performance.md).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models.base import Family

PLUGIN_GROUP = "trtllm_forge.plugins"


class FamilyRegistry:
    """Name -> family map with loud misses (the valid names are listed)."""

    kind = "models"

    def __init__(
        self,
        *,
        plugin_group: str | None = PLUGIN_GROUP,
        deferred: Mapping[str, Callable[[], Family]] | None = None,
    ) -> None:
        self._by_arch: dict[str, Family] = {}
        # Architecture -> the function importing its family's module, called on lookup.
        self._deferred = dict(deferred or {})
        self._plugin_group = plugin_group
        self._plugins_loaded = plugin_group is None

    def register(self, family: Family) -> Family:
        for arch in family.architectures:
            existing = self._by_arch.get(arch) or self._load_deferred(arch)
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
        return sorted(self._by_arch.keys() | self._deferred.keys())

    def knows(self, architecture: str) -> bool:
        """``architecture in names()``, loading plugins only when no built-in has it."""
        if architecture in self._by_arch or architecture in self._deferred:
            return True
        return architecture in self.names()

    def get(self, architecture: str) -> Family:
        family = self._by_arch.get(architecture) or self._load_deferred(architecture)
        if family is None:
            self._load_plugins()
            family = self._by_arch.get(architecture)
        if family is None:
            raise self._unknown(architecture)
        return family

    def _load_deferred(self, architecture: str) -> Family | None:
        load = self._deferred.pop(architecture, None)
        if load is None:
            return None
        family = load()
        self._by_arch[architecture] = family
        return family

    def _unknown(self, architecture: str) -> ForgeError:
        """A model forge cannot convert is a recipe/model choice (exit 2), not an
        unavailable source. A close name is suggested only for what looks like a typo:
        "Gemma3nForCausalLM → did you mean Gemma3ForCausalLM?" helps nobody."""
        import difflib  # only a miss needs it

        names = self.names()
        close = difflib.get_close_matches(architecture, names, n=1)
        maybe = f" (did you mean {close[0]}?)" if close and not _is_real(architecture) else ""
        return ForgeError(
            ExitCode.RECIPE,
            f"forge cannot convert model architecture {architecture!r}{maybe}",
            hint=f"supported architectures: {', '.join(names)} (docs/models.md)",
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
    """The entry points installed distributions declare in ``group``, as
    ``importlib.metadata.entry_points(group=group)`` finds them.

    importlib.metadata parses every distribution's entry_points.txt to answer, and every
    `forge` run asks (the source check looks the model's architecture up by name), so
    the cost grew with the venv. Here only the files that name the group are parsed;
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


# One function per built-in family module, importing it on first use (cached: a family
# serving several architectures is one object). Imports, not module-name strings, so the
# import graph check (tools/import_layers.py) sees them.


@functools.cache
def _llama() -> Family:
    from trtllm_forge.models.llama import LlamaFamily

    return LlamaFamily()


@functools.cache
def _falcon() -> Family:
    from trtllm_forge.models.falcon import FalconFamily

    return FalconFamily()


@functools.cache
def _bloom() -> Family:
    from trtllm_forge.models.bloom import BloomFamily

    return BloomFamily()


@functools.cache
def _mpt() -> Family:
    from trtllm_forge.models.mpt import MptFamily

    return MptFamily()


@functools.cache
def _gpt2() -> Family:
    from trtllm_forge.models.gpt2 import Gpt2Family

    return Gpt2Family()


@functools.cache
def _gpt_neox() -> Family:
    from trtllm_forge.models.gpt_neox import GptNeoxFamily

    return GptNeoxFamily()


@functools.cache
def _gpt_bigcode() -> Family:
    from trtllm_forge.models.gpt_bigcode import GptBigCodeFamily

    return GptBigCodeFamily()


@functools.cache
def _gptj() -> Family:
    from trtllm_forge.models.gptj import GptjFamily

    return GptjFamily()


@functools.cache
def _gemma() -> Family:
    from trtllm_forge.models.gemma import GemmaFamily

    return GemmaFamily()


@functools.cache
def _gemma2() -> Family:
    from trtllm_forge.models.gemma2 import Gemma2Family

    return Gemma2Family()


@functools.cache
def _qwen3() -> Family:
    from trtllm_forge.models.qwen3 import Qwen3Family

    return Qwen3Family()


@functools.cache
def _phi3() -> Family:
    from trtllm_forge.models.phi3 import Phi3Family

    return Phi3Family()


@functools.cache
def _gemma3() -> Family:
    from trtllm_forge.models.gemma3 import Gemma3Family

    return Gemma3Family()


@functools.cache
def _mixtral() -> Family:
    from trtllm_forge.models.mixtral import MixtralFamily

    return MixtralFamily()


@functools.cache
def _qwen3_moe() -> Family:
    from trtllm_forge.models.qwen3_moe import Qwen3MoeFamily

    return Qwen3MoeFamily()


@functools.cache
def _qwen2_moe() -> Family:
    from trtllm_forge.models.qwen2_moe import Qwen2MoeFamily

    return Qwen2MoeFamily()


@functools.cache
def _chatglm() -> Family:
    from trtllm_forge.models.chatglm import ChatGLMFamily

    return ChatGLMFamily()


@functools.cache
def _baichuan() -> Family:
    from trtllm_forge.models.baichuan import BaichuanFamily

    return BaichuanFamily()


# Architecture -> its built-in family (chatglm and baichuan: forge's own models,
# models/native.py, since transformers has no class for them).
BUILTIN_FAMILIES: dict[str, Callable[[], Family]] = {
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _llama,
    "Qwen2ForCausalLM": _llama,
    "FalconForCausalLM": _falcon,
    "BloomForCausalLM": _bloom,
    "MptForCausalLM": _mpt,
    "GPT2LMHeadModel": _gpt2,
    "GPTNeoXForCausalLM": _gpt_neox,
    "GPTBigCodeForCausalLM": _gpt_bigcode,
    "GPTJForCausalLM": _gptj,
    "GemmaForCausalLM": _gemma,
    "Gemma2ForCausalLM": _gemma2,
    "Qwen3ForCausalLM": _qwen3,
    "Phi3ForCausalLM": _phi3,
    "Gemma3ForCausalLM": _gemma3,
    "Gemma3ForConditionalGeneration": _gemma3,
    "MixtralForCausalLM": _mixtral,
    "Qwen3MoeForCausalLM": _qwen3_moe,
    "Qwen2MoeForCausalLM": _qwen2_moe,
    "ChatGLMModel": _chatglm,
    "ChatGLMForConditionalGeneration": _chatglm,
    "BaichuanForCausalLM": _baichuan,
}
REGISTRY = FamilyRegistry(deferred=BUILTIN_FAMILIES)

# The model_type transformers pairs with each built-in architecture. transformers picks
# its config class (and so the reference model verify loads) by model_type, not by
# architecture: a config whose model_type disagrees used to pass fetch, convert,
# calibrate and build and fail only in verify. Plugin architectures are not listed.
MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "FalconForCausalLM": "falcon",
    "BloomForCausalLM": "bloom",
    "MptForCausalLM": "mpt",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPTBigCodeForCausalLM": "gpt_bigcode",
    "GPTJForCausalLM": "gptj",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3ForConditionalGeneration": "gemma3",
    "MixtralForCausalLM": "mixtral",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Qwen2MoeForCausalLM": "qwen2_moe",
}


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
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ForgeError(  # a hub config is checked before the folder rules see it
            ExitCode.SOURCE,
            f"config.json 'architectures' must be a list of class names, got {archs!r:.80}",
            hint='e.g. "architectures": ["LlamaForCausalLM"]',
        )
    family = registry.get(archs[0])
    try:
        family.validate(hf_config)
    except _WRONG_TYPE as exc:
        # validate() only reads config values; failing on one is the config's fault (a
        # fuzzed `rope_parameters: true` was an internal error), so say which is wrong.
        raise ForgeError(
            ExitCode.SOURCE,
            f"config.json has a value {family.name} cannot use: {type(exc).__name__}: {exc}",
            hint="check the types in the model's config.json (numbers, lists, objects)",
        ) from None
    return family


_WRONG_TYPE = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError)


def check_model_type(hf_config: Mapping[str, Any]) -> None:
    """config.json's model_type is the one transformers pairs with its architecture."""
    archs = hf_config.get("architectures") or [None]
    architecture, model_type = str(archs[0]), hf_config.get("model_type")
    expected = MODEL_TYPES.get(architecture)
    if expected is not None and model_type != expected:
        raise ForgeError(
            ExitCode.SOURCE,
            f"config.json says model_type {model_type!r} for architecture {architecture}, "
            f"which transformers loads only as model_type {expected!r}",
            hint=f'set "model_type": "{expected}" in config.json, or use an unmodified checkpoint',
        )


def _is_real(architecture: str) -> bool:
    """Whether transformers ships this class (dir() of its lazy module imports nothing)."""
    import transformers

    return architecture in dir(transformers)
