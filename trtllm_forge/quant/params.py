"""Parameters of each quantization method, validated without importing torch.

A method's parameters are declared once, in its recipe section (recipe/schema.py):
name, type, default, bounds and description. :func:`model_of` builds a model from
those fields and the method's record (quant/<method>.py), which adds what they mean to
TensorRT-LLM: the ``quant_algo`` the method produces and its ``quantization`` fields,
so ``forge plan`` can show (and key) the quantization without loading any weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, create_model

# key_view lives apart so keying calibrate builds none of the models here; re-exported.
from trtllm_forge.quant.key_view import key_view as key_view

# The recipe's kv_cache names and their TensorRT-LLM algos; re-exported.
from trtllm_forge.quant.kv_formats import KV_CACHE_ALGOS as KV_CACHE_ALGOS
from trtllm_forge.recipe import schema

if TYPE_CHECKING:
    from trtllm_forge.quant.record_types import Method


class MethodParams(BaseModel):
    """Base: frozen, no unknown keys; not strict, unlike the recipe models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def quant_algo(self) -> str | None:
        """TensorRT-LLM ``QuantAlgo`` name written to ``config.json`` (None: weights stay)."""
        raise NotImplementedError

    def quantization_fields(self) -> dict[str, Any]:
        """Extra ``quantization`` keys beyond quant_algo / kv_cache_quant_algo / exclude_modules."""
        return {}


def declared(section: type[BaseModel]) -> type[MethodParams]:
    """A MethodParams model holding the method's own fields of its recipe ``section``."""
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in schema.method_fields(section).items()
    }
    return create_model(f"{section.__name__}Fields", __base__=MethodParams, **fields)


_MODELS: dict[str, type[MethodParams]] = {}


def model_of(method: Method) -> type[MethodParams]:
    """The parameter model of a method declared in its module: its recipe section's own
    fields; quant_algo and the quantization fields from its record (built once)."""
    if method.name not in _MODELS:
        section = next(s for s in schema.QUANTIZE_SECTIONS if schema.method_name(s) == method.name)
        base = cast(type[MethodParams], declared(section))

        class Params(base):  # type: ignore[valid-type,misc]
            def quant_algo(self) -> str | None:
                return method.quant_algo(self.model_dump(mode="json"))

            def quantization_fields(self) -> dict[str, Any]:
                return method.quantization_fields(self)

        Params.__name__ = Params.__qualname__ = f"{section.__name__}Params"
        _MODELS[method.name] = Params
    return _MODELS[method.name]
