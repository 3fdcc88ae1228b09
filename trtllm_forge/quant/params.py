"""Parameters of each quantization method, validated without importing torch.

A method's parameters are declared once, in its recipe section (recipe/schema.py):
name, type, default, bounds and description. Each model here takes those fields and
adds what they mean to TensorRT-LLM: the ``quant_algo`` the method produces, so
``forge plan`` can show (and key) the quantization without loading any weights.
A method declared in its own module (``quant/<method>.py``) gets its model from
:func:`model_of`, built from its record on first use.
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


class NoneParams(declared(schema.NoQuant)):  # type: ignore[misc]
    """No weight quantization; only the KV cache may be quantized."""

    def quant_algo(self) -> str | None:
        return None


class Int8WoParams(declared(schema.Int8WeightOnly)):  # type: ignore[misc]
    """INT8 per-output-channel weight-only, round-to-nearest (W8A16)."""

    def quant_algo(self) -> str:
        return "W8A16"


class GroupwiseInt4(MethodParams):
    """The INT4 group-wise layout several methods store; ``group_size`` is each method's."""

    if TYPE_CHECKING:
        group_size: int

    def quantization_fields(self) -> dict[str, Any]:
        # The groupwise INT4 kernels are symmetric here: no zero point is stored.
        return {
            "group_size": self.group_size,
            "has_zero_point": False,
            "pre_quant_scale": self.has_pre_quant_scale(),
        }

    def has_pre_quant_scale(self) -> bool:
        return False

    def quant_algo(self) -> str:
        # TensorRT-LLM's groupwise INT4 layout (packed int4, per-group scales) is named
        # after AWQ; RTN and GPTQ results are stored in it without a pre-quant scale.
        return "W4A16_AWQ"


class Int4WoParams(declared(schema.Int4WeightOnly), GroupwiseInt4):  # type: ignore[misc]
    """INT4 group-wise weight-only, round-to-nearest."""


class AwqParams(declared(schema.Awq), GroupwiseInt4):  # type: ignore[misc]
    """AWQ (activation-aware scaling search, ModelOpt ``awq_lite``) + INT4 group-wise."""

    def has_pre_quant_scale(self) -> bool:
        return True


class GptqParams(declared(schema.Gptq), GroupwiseInt4):  # type: ignore[misc]
    """GPTQ: Hessian-guided INT4 group-wise rounding with error feedback."""

    if TYPE_CHECKING:
        damping: float
        act_order: bool


class SmoothQuantParams(declared(schema.SmoothQuant)):  # type: ignore[misc]
    """SmoothQuant W8A8: per-channel INT8 weights, INT8 activations after smoothing."""

    if TYPE_CHECKING:
        alpha: float
        activations: str

    def quant_algo(self) -> str:
        if self.activations == "per_token":
            return "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
        return "W8A8_SQ_PER_CHANNEL"

    def quantization_fields(self) -> dict[str, Any]:
        return {"smoothquant_val": self.alpha}


_MODELS: dict[str, type[MethodParams]] = {}


def model_of(method: Method) -> type[MethodParams]:
    """The parameter model of a method declared in its module: its recipe section's own
    fields; quant_algo and the quantization fields from its record (built once)."""
    if method.name not in _MODELS:
        section = next(s for s in schema.QUANTIZE_SECTIONS if schema.method_name(s) == method.name)
        base = cast(type[MethodParams], declared(section))

        class Params(base):  # type: ignore[valid-type,misc]
            def quant_algo(self) -> str:
                return method.quant_algo(self.model_dump(mode="json"))

            def quantization_fields(self) -> dict[str, Any]:
                return method.quantization_fields(self)

        Params.__name__ = Params.__qualname__ = f"{section.__name__}Params"
        _MODELS[method.name] = Params
    return _MODELS[method.name]
