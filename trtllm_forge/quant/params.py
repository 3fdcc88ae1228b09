"""Parameters of each quantization method, validated without importing torch.

Each model knows the TensorRT-LLM ``quant_algo`` it produces, so ``forge plan``
can show (and key) the quantization without loading any weights.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trtllm_forge.quant.records import KV_FORMATS

GroupSize = Literal[32, 64, 128]


class MethodParams(BaseModel):
    """Base: strict, frozen, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def quant_algo(self) -> str | None:
        """TensorRT-LLM ``QuantAlgo`` name written to ``config.json`` (None: weights stay)."""
        raise NotImplementedError

    def quantization_fields(self) -> dict[str, Any]:
        """Extra ``quantization`` keys beyond quant_algo / kv_cache_quant_algo / exclude_modules."""
        return {}


class NoneParams(MethodParams):
    """No weight quantization; only the KV cache may be quantized."""

    def quant_algo(self) -> str | None:
        return None


class _HeadOption(MethodParams):
    """Weight-only methods the ort profile runs as MatMulNBits may quantize lm_head too."""

    # Off by default: the head stays in the checkpoint dtype (TensorRT-LLM's default
    # exclusion), and recipes written before the option keep their keys and numbers. On:
    # lm_head is rounded to nearest in the method's weight format (no calibration: AWQ's
    # search and GPTQ's error feedback cover the decoder linears only), which is what the
    # onnxruntime-genai builder does for int4 (docs/engine-performance.md).
    quantize_lm_head: bool = False


class Int8WoParams(_HeadOption):
    """INT8 per-output-channel weight-only, round-to-nearest (W8A16)."""

    def quant_algo(self) -> str:
        return "W8A16"


class _GroupwiseInt4(MethodParams):
    group_size: GroupSize = 128

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


class Int4WoParams(_GroupwiseInt4, _HeadOption):
    """INT4 group-wise weight-only, round-to-nearest."""


class AwqParams(_GroupwiseInt4, _HeadOption):
    """AWQ (activation-aware scaling search, ModelOpt ``awq_lite``) + INT4 group-wise."""

    def has_pre_quant_scale(self) -> bool:
        return True


class W4A8AwqParams(_GroupwiseInt4):
    """W4A8 AWQ (ModelOpt ``W4A8_AWQ_BETA_CFG``): AWQ-smoothed INT4 group-wise weights run
    as FP8 (a per-tensor FP8 scale over the INT4 groups), static FP8 activations."""

    def has_pre_quant_scale(self) -> bool:
        return True

    def quant_algo(self) -> str:
        return "W4A8_AWQ"


class GptqParams(_GroupwiseInt4, _HeadOption):
    """GPTQ: Hessian-guided INT4 group-wise rounding with error feedback."""

    damping: float = Field(0.01, gt=0.0, le=1.0)
    act_order: bool = False


class SmoothQuantParams(MethodParams):
    """SmoothQuant W8A8: per-channel INT8 weights, INT8 activations after smoothing."""

    alpha: float = Field(0.5, ge=0.0, le=1.0)
    activations: Literal["per_tensor", "per_token"] = "per_tensor"

    def quant_algo(self) -> str:
        if self.activations == "per_token":
            return "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
        return "W8A8_SQ_PER_CHANNEL"

    def quantization_fields(self) -> dict[str, Any]:
        return {"smoothquant_val": self.alpha}


class Fp8Params(MethodParams):
    """FP8 E4M3 W8A8: per-tensor scales, or per-channel weights + per-token activations."""

    granularity: Literal["per_tensor", "per_channel_per_token"] = "per_tensor"

    def quant_algo(self) -> str:
        if self.granularity == "per_channel_per_token":
            return "FP8_PER_CHANNEL_PER_TOKEN"
        return "FP8"


class Fp8BlockParams(MethodParams):
    """FP8 E4M3 weights in ``block_size × block_size`` tiles, one scale each; activations
    quantized at run time per (token, ``block_size`` channels) — DeepSeek-style block FP8."""

    # TensorRT-LLM's and vLLM's block-FP8 kernels run 128 × 128 only; 32 and 64 exist for
    # models whose sizes 128 does not divide (the tiny test model, SmolLM2's 576).
    block_size: Literal[32, 64, 128] = 128

    def quant_algo(self) -> str:
        return "FP8_BLOCK_SCALES"

    def quantization_fields(self) -> dict[str, Any]:
        return {"group_size": self.block_size}


class NvFp4Params(MethodParams):
    """NVFP4 W4A4: E2M1 weights and activations in blocks of 16 with FP8 E4M3 block scales
    and an FP32 per-tensor scale (static for activations, from calibration)."""

    def quant_algo(self) -> str:
        return "NVFP4"

    def quantization_fields(self) -> dict[str, Any]:
        return {"group_size": 16}


# The recipe's kv_cache names and their TensorRT-LLM algos: the KV-format records'.
KV_CACHE_ALGOS: dict[str, str] = {name: kv.trtllm_algo for name, kv in KV_FORMATS.items()}


def key_view(params: dict[str, Any]) -> dict[str, Any]:
    """Dumped parameters as the calibrate key holds them: an option added later is left
    out at its default (``quantize_lm_head: false``), so keys made before it stay valid."""
    if params.get("quantize_lm_head") is False:
        return {k: v for k, v in params.items() if k != "quantize_lm_head"}
    return params
