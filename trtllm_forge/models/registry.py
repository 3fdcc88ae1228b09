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
from collections.abc import Callable, Mapping
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models.base import Family
from trtllm_forge.plugin_hooks import PLUGIN_GROUP
from trtllm_forge.registry import Registry


class FamilyRegistry(Registry[Family]):
    """HF architecture -> family (trtllm_forge/registry.py), with loud misses."""

    def __init__(
        self,
        *,
        plugin_group: str | None = PLUGIN_GROUP,
        deferred: Mapping[str, Callable[[], Family]] | None = None,
    ) -> None:
        super().__init__("models", "architecture", plugin_group=plugin_group, deferred=deferred)

    def register(self, family: Family) -> Family:
        """A plugin's (or a test's) family, under each architecture it converts."""
        for arch in family.architectures:
            self.add(arch, family)
        return family

    def unknown(self, name: str) -> ForgeError:
        """A model forge cannot convert is a recipe/model choice (exit 2), not an
        unavailable source. A close name is suggested only for what looks like a typo:
        "Gemma3nForCausalLM → did you mean Gemma3ForCausalLM?" helps nobody."""
        import difflib  # only a miss needs it

        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        maybe = f" (did you mean {close[0]}?)" if close and not _is_real(name) else ""
        return ForgeError(
            ExitCode.RECIPE,
            f"forge cannot convert model architecture {name!r}{maybe}",
            hint=f"supported architectures: {', '.join(names)} (docs/models.md)",
        )


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
