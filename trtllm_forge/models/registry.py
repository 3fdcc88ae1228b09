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
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models.baichuan import BaichuanFamily
from trtllm_forge.models.base import Family
from trtllm_forge.models.bloom import BloomFamily
from trtllm_forge.models.chatglm import ChatGLMFamily
from trtllm_forge.models.falcon import FalconFamily
from trtllm_forge.models.gemma import GemmaFamily
from trtllm_forge.models.gemma2 import Gemma2Family
from trtllm_forge.models.gemma3 import Gemma3Family
from trtllm_forge.models.gpt2 import Gpt2Family
from trtllm_forge.models.gpt_bigcode import GptBigCodeFamily
from trtllm_forge.models.gpt_neox import GptNeoxFamily
from trtllm_forge.models.gptj import GptjFamily
from trtllm_forge.models.llama import LlamaFamily
from trtllm_forge.models.mixtral import MixtralFamily
from trtllm_forge.models.mpt import MptFamily
from trtllm_forge.models.phi3 import Phi3Family
from trtllm_forge.models.qwen2_moe import Qwen2MoeFamily
from trtllm_forge.models.qwen3 import Qwen3Family
from trtllm_forge.models.qwen3_moe import Qwen3MoeFamily

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
        """A model forge cannot convert is a recipe/model choice (exit 2), not an
        unavailable source. A close name is suggested only for what looks like a typo:
        "Gemma3nForCausalLM → did you mean Gemma3ForCausalLM?" helps nobody."""
        names = sorted(self._by_arch)
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
REGISTRY.register(Qwen3Family())
REGISTRY.register(Phi3Family())
REGISTRY.register(Gemma3Family())
REGISTRY.register(MixtralFamily())
REGISTRY.register(Qwen3MoeFamily())
REGISTRY.register(Qwen2MoeFamily())
# transformers has no class for these two: forge's own models (models/native.py).
REGISTRY.register(ChatGLMFamily())
REGISTRY.register(BaichuanFamily())


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
