"""One record per quantization format: what it stores and where each output target puts it.

A *format* is what a quantized linear holds, independent of the method that
computed it: int4_wo and GPTQ both produce ``W4A16`` (packed int4, group scales),
AWQ adds a pre-quant scale (``W4A16_AWQ``). Each :class:`QuantFormat` says, as
data, its TensorRT-LLM ``quant_algo`` and tensors, its packing, and its mapping
into each Hugging Face output target — or :class:`NotCarried` with the reason,
which the plan-time check quotes when a recipe asks for the impossible.

Nothing here imports torch: ``forge plan`` refuses an uncarriable recipe from
these records alone. The tensor arithmetic lives in ``trtllm_forge.hf``; the
TensorRT-LLM builders in :mod:`trtllm_forge.quant.formats` (keyed by quant_algo).

Still spread elsewhere (each keyed by quant_algo, listed here so a new format
knows every place to touch): ONNX lowering (``engine/onnx/quant_lowering.py``),
fake-quant rules (``quant/fakequant.py``), shard axes (``checkpoint/shard.py``),
strong typing (``engine/backends/tensorrt.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Target = Literal["modelopt", "compressed-tensors"]
Activations = Literal[
    "none",
    "static_int8",
    "static_fp8",
    "per_token_int8",
    "per_token_fp8",
    "per_group_fp8",
    "nvfp4",
]
TARGETS: tuple[Target, ...] = ("modelopt", "compressed-tensors")


@dataclass(frozen=True)
class NotCarried:
    """A target that cannot hold the format, and why (quoted in the plan-time error)."""

    reason: str


@dataclass(frozen=True)
class ModelOpt:
    """ModelOpt's unified HF checkpoint (``hf_quant_config.json``), per ModelOpt 0.47's exporter.

    Attributes:
        quant_algo: ``quantization.quant_algo``.
        tensors: per-linear tensors beside ``weight`` (``weight_scale``, ``input_scale``...).
        share_input: linears reading one activation (q/k/v, gate/up) get one pre-quant
            scale (averaged, weights re-smoothed), one static input range and one
            per-tensor weight range — the exporter's fusion rule. ModelOpt skips it for
            per-tensor FP8, whose consumers requantize fused GEMMs themselves.
        fold_pre_quant_scale: the shared pre-quant scale of q/k/v and gate/up is folded
            into the norm before them (AWQ); o_proj/down_proj keep theirs.
        group_fields: whether ``group_size``/``has_zero_point``/``pre_quant_scale`` are written.
        block_size: a fixed ``group_size`` written alone (NVFP4's 16), or None.
    """

    quant_algo: str
    tensors: tuple[str, ...]
    share_input: bool = True
    fold_pre_quant_scale: bool = False
    group_fields: bool = False
    block_size: int | None = None


@dataclass(frozen=True)
class CompressedTensors:
    """A compressed-tensors ``config_groups`` entry and the compressor ``format``.

    ``weights`` / ``input_activations`` are ``QuantizationArgs`` fields; ``group_size``
    and ``actorder`` are filled from the method's parameters.
    """

    format: str
    weights: dict[str, Any]
    input_activations: dict[str, Any] | None
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class QuantFormat:
    """One quantization format.

    Attributes:
        name: forge's name of the format (the TensorRT-LLM quant_algo, except
            ``W4A16`` = groupwise INT4 without a pre-quant scale).
        trtllm_algo: ``quantization.quant_algo`` of the canonical checkpoint.
        weight: stored weight dtype and granularity, in words.
        packing: how the weight is packed in the canonical checkpoint.
        trtllm_tensors: canonical tensors of one linear (docs/trtllm-checkpoint.md §2).
        strongly_typed: TensorRT must build the engine strongly typed.
        modelopt / compressed_tensors: the HF targets' mapping, or why not.
        activations: what happens to a quantized linear's input (fake quant, lowering):
            ``none``, ``static_int8``, ``static_fp8``, ``per_token_int8``, ``per_token_fp8``,
            ``per_group_fp8`` (dynamic, per token and block of input channels).
        trtllm_share_input: in the canonical checkpoint, fc and gate (one input) share
            input-side quantities — FP8 because TensorRT-LLM fuses the two GEMMs, the
            SmoothQuant plugin because one norm carries the smoothing for both.
        folds_smoothing_into_norm: column layers' smoothing lives in the norm before them.
        onnx: why an ONNX engine (ONNX Runtime, TensorRT) cannot run the format exactly,
            or None when engine/onnx/quant_lowering.py lowers it.
        trtllm_build: why TensorRT-LLM ≤ 1.2's ``trtllm-build`` cannot take the canonical
            checkpoint (``build.backend: trtllm``, ``forge export trtllm-ckpt``), or None.
    """

    name: str
    trtllm_algo: str
    weight: str
    packing: str
    trtllm_tensors: tuple[str, ...]
    strongly_typed: bool
    modelopt: ModelOpt | NotCarried
    compressed_tensors: CompressedTensors | NotCarried
    activations: Activations = "none"
    trtllm_share_input: bool = False
    folds_smoothing_into_norm: bool = False
    onnx: NotCarried | None = None
    trtllm_build: NotCarried | None = None

    def target(self, target: Target) -> ModelOpt | CompressedTensors | NotCarried:
        return self.modelopt if target == "modelopt" else self.compressed_tensors


_INT8_CHANNEL = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
_INT4_GROUP = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group"}
_FP8 = {"num_bits": 8, "type": "float", "symmetric": True}
_FP4_GROUP = {
    "num_bits": 4,
    "type": "float",
    "symmetric": True,
    "strategy": "tensor_group",
    "scale_dtype": "torch.float8_e4m3fn",  # block scales (activations: computed) are FP8
}
_PRE_QUANT_IN_CT = (
    "compressed-tensors has no per-input-channel activation scale: the pre-quant scale of "
    "o_proj/down_proj (whose inputs have no norm to fold it into) cannot be stored"
)

FORMATS: dict[str, QuantFormat] = {
    f.name: f
    for f in (
        QuantFormat(
            name="W8A16",
            trtllm_algo="W8A16",
            weight="int8, one scale per output channel",
            packing="int8 [out, in]",
            trtllm_tensors=("weight I8 [out,in]", "weights_scaling_factor F32 [out]"),
            strongly_typed=False,
            modelopt=ModelOpt("W8A16", ("weight_scale",)),
            compressed_tensors=CompressedTensors(
                "pack-quantized", _INT8_CHANNEL, None, ("weight_packed", "weight_scale")
            ),
        ),
        QuantFormat(
            name="W4A16",
            trtllm_algo="W4A16_AWQ",
            weight="int4, one scale per (output channel, input group)",
            packing="two int4 output rows per byte, low nibble = even row",
            trtllm_tensors=("weight I8 [out/2,in]", "weights_scaling_factor F32 [out,in/g]"),
            strongly_typed=False,
            modelopt=ModelOpt("W4A16_AWQ", ("weight_scale",), group_fields=True),
            compressed_tensors=CompressedTensors(
                "pack-quantized", _INT4_GROUP, None, ("weight_packed", "weight_scale")
            ),
        ),
        QuantFormat(
            name="W4A16_AWQ",
            trtllm_algo="W4A16_AWQ",
            weight="int4 groups of the AWQ-smoothed weight, plus a pre-quant scale",
            packing="two int4 output rows per byte, low nibble = even row",
            trtllm_tensors=(
                "weight I8 [out/2,in]",
                "weights_scaling_factor F32 [out,in/g]",
                "prequant_scaling_factor dtype [in]",
            ),
            strongly_typed=False,
            modelopt=ModelOpt(
                "W4A16_AWQ",
                ("weight_scale", "pre_quant_scale"),
                fold_pre_quant_scale=True,
                group_fields=True,
            ),
            compressed_tensors=NotCarried(_PRE_QUANT_IN_CT),
        ),
        QuantFormat(
            name="W8A8_SQ_PER_CHANNEL",
            trtllm_algo="W8A8_SQ_PER_CHANNEL",
            weight="int8 per output channel of the smoothed weight; static int8 activations",
            packing="int8 [out, in]",
            trtllm_tensors=(
                "weight I8",
                "weights_scaling_factor F32 [out]",
                "activation_scaling_factor F32 [1]",
                "prequant_scaling_factor dtype [in]",
            ),
            strongly_typed=False,
            modelopt=ModelOpt(
                "W8A8_SQ_PER_CHANNEL", ("weight_scale", "input_scale", "pre_quant_scale")
            ),
            compressed_tensors=NotCarried(_PRE_QUANT_IN_CT),
            activations="static_int8",
        ),
        QuantFormat(
            name="W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
            trtllm_algo="W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
            weight="int8 per output channel; dynamic per-token int8 activations",
            packing="int8 [out, in]",
            trtllm_tensors=("weight I8", "per_channel_scale F32 [1,out]", "smoother F32 [1,in]"),
            strongly_typed=False,
            modelopt=NotCarried(
                "ModelOpt's format has no dynamic per-token INT8 activations "
                "(its SmoothQuant is W8A8_SQ_PER_CHANNEL with a static input scale)"
            ),
            compressed_tensors=NotCarried(
                "the row layers' smoother (o_proj/down_proj inputs) has no place in "
                "compressed-tensors"
            ),
            activations="per_token_int8",
            trtllm_share_input=True,
            folds_smoothing_into_norm=True,
        ),
        QuantFormat(
            name="FP8",
            trtllm_algo="FP8",
            weight="float8 e4m3, one scale per tensor; static fp8 activations",
            packing="float8_e4m3fn [out, in]",
            trtllm_tensors=(
                "weight F8_E4M3",
                "weights_scaling_factor F32 [1]",
                "activation_scaling_factor F32 [1]",
            ),
            strongly_typed=True,
            modelopt=ModelOpt("FP8", ("weight_scale", "input_scale"), share_input=False),
            compressed_tensors=CompressedTensors(
                "float-quantized",
                {**_FP8, "strategy": "tensor"},
                {**_FP8, "strategy": "tensor", "dynamic": False},
                ("weight", "weight_scale", "input_scale"),
            ),
            activations="static_fp8",
            trtllm_share_input=True,
        ),
        QuantFormat(
            name="FP8_PER_CHANNEL_PER_TOKEN",
            trtllm_algo="FP8_PER_CHANNEL_PER_TOKEN",
            weight="float8 e4m3, one scale per output channel; dynamic per-token activations",
            packing="float8_e4m3fn [out, in]",
            trtllm_tensors=("weight F8_E4M3", "per_channel_scale F32 [out]"),
            strongly_typed=True,
            modelopt=ModelOpt("FP8_PER_CHANNEL_PER_TOKEN", ("weight_scale",)),
            compressed_tensors=CompressedTensors(
                "float-quantized",
                {**_FP8, "strategy": "channel"},
                {**_FP8, "strategy": "token", "dynamic": True},
                ("weight", "weight_scale"),
            ),
            activations="per_token_fp8",
        ),
        QuantFormat(
            name="FP8_BLOCK_SCALES",
            trtllm_algo="FP8_BLOCK_SCALES",
            weight="float8 e4m3, one scale per b×b tile (b = 128 for the kernels); dynamic "
            "fp8 activations per token and b input channels",
            packing="float8_e4m3fn [out, in]",
            trtllm_tensors=("weight F8_E4M3 [out,in]", "weights_scaling_factor F32 [out/b,in/b]"),
            strongly_typed=True,
            modelopt=NotCarried(
                "ModelOpt 0.47 exports 2-D block FP8 only as weight-only `fp8_pb_wo` (no "
                "activation quantization, a 4-D [out/b,1,in/b,1] scale), a quant_algo "
                "TensorRT-LLM's loader does not know; TensorRT-LLM reads FP8_BLOCK_SCALES from "
                "compressed-tensors `strategy: block`"
            ),
            compressed_tensors=CompressedTensors(
                "float-quantized",
                {**_FP8, "strategy": "block"},
                {**_FP8, "strategy": "group", "dynamic": True},
                ("weight", "weight_scale"),
            ),
            activations="per_group_fp8",
            trtllm_build=NotCarried(
                "TensorRT-LLM's TensorRT-engine path handles FP8_BLOCK_SCALES only partly "
                "(a PyTorch-backend algo; docs/trtllm-checkpoint.md §2), so forge writes no "
                "trtllm-build checkpoint for it; its PyTorch flow reads the compressed-tensors "
                "folder"
            ),
        ),
        QuantFormat(
            name="W4A8_AWQ",
            trtllm_algo="W4A8_AWQ",
            weight="int4 groups of the AWQ-smoothed weight run as fp8 (one per-tensor fp8 "
            "scale over the groups), a pre-quant scale, static fp8 activations",
            packing="two int4 output rows per byte, low nibble = even row",
            trtllm_tensors=(
                "weight I8 [out/2,in]",
                "weights_scaling_factor F32 [out,in/g]",
                "weights_scaling_factor_2 F32 [1]",
                "activation_scaling_factor F32 [1]",
                "prequant_scaling_factor dtype [in]",
            ),
            strongly_typed=True,
            modelopt=ModelOpt(
                "W4A8_AWQ",
                ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"),
                fold_pre_quant_scale=True,
                group_fields=True,
            ),
            compressed_tensors=NotCarried(_PRE_QUANT_IN_CT),
            activations="static_fp8",
        ),
        QuantFormat(
            name="NVFP4",
            trtllm_algo="NVFP4",
            weight="fp4 e2m1 in blocks of 16 input channels, one fp8 e4m3 scale per block and "
            "one fp32 scale per tensor; activations the same, block scales computed at run time",
            packing="uint8 [out, in/2], two inputs per byte, low nibble = even input",
            trtllm_tensors=(
                "weight U8 [out,in/2]",
                "weights_scaling_factor F8_E4M3 [out,in/16]",
                "weights_scaling_factor_2 F32 []",
                "activation_scaling_factor F32 []",
            ),
            strongly_typed=True,
            modelopt=ModelOpt(
                "NVFP4", ("weight_scale", "weight_scale_2", "input_scale"), block_size=16
            ),
            compressed_tensors=CompressedTensors(
                "nvfp4-pack-quantized",
                {**_FP4_GROUP, "dynamic": False},
                {**_FP4_GROUP, "dynamic": "local"},
                ("weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"),
            ),
            activations="nvfp4",
            trtllm_share_input=True,
            onnx=NotCarried(
                "ONNX Runtime 1.31's CPU provider has no QuantizeLinear to FLOAT4E2M1 "
                "(opset 23-25: NOT_IMPLEMENTED), so NVFP4 activations cannot be Q/DQ'd; the "
                "Hugging Face formats carry it (build.backend: hf), verified by fake quant"
            ),
        ),
    )
}


def trtllm_algos(predicate: Callable[[QuantFormat], bool]) -> frozenset[str]:
    """The canonical checkpoint's quant_algo names of the formats ``predicate`` selects."""
    return frozenset(f.trtllm_algo for f in FORMATS.values() if predicate(f))


@dataclass(frozen=True)
class KvFormat:
    """A KV-cache format: recipe name, TensorRT-LLM algo, and each HF target's spelling.

    ``qmax`` turns a cache's calibrated max |K| or |V| into the HF targets' scale
    (amax / qmax; ModelOpt writes amax / 448 for FP8 and NVFP4 alike). ``onnx`` says why
    an ONNX engine cannot run the format exactly, or None when engine/onnx/quant_lowering.py does.
    """

    name: str
    trtllm_algo: str
    qmax: float
    modelopt: str | NotCarried  # hf_quant_config kv_cache_quant_algo
    compressed_tensors: dict[str, Any] | NotCarried  # kv_cache_scheme
    onnx: NotCarried | None = None


KV_FORMATS: dict[str, KvFormat] = {
    "int8": KvFormat(
        "int8",
        "INT8",
        127.0,
        NotCarried(
            "ModelOpt's HF exporter writes only FP8 (and NVFP4) KV-cache scales; 0.47 refuses "
            "an INT8 KV cache ('Invalid KV cache quantization format')"
        ),
        {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False},
    ),
    "fp8": KvFormat(
        "fp8",
        "FP8",
        448.0,
        "FP8",
        {
            "num_bits": 8,
            "type": "float",
            "symmetric": True,
            "strategy": "tensor",
            "dynamic": False,
        },
    ),
    # NVFP4 (ModelOpt's NVFP4_KV_CFG): E2M1 values in blocks of 16 along the head
    # dimension, FP8 E4M3 block scales computed as the cache is written, one static FP32
    # scale per cache (amax / (6 · 448)). compressed-tensors 0.20 expresses it as a
    # tensor_group scheme, whose static part is `self_attn.k_global_scale` (the reciprocal).
    "nvfp4": KvFormat(
        "nvfp4",
        "NVFP4",
        448.0,
        "NVFP4",
        {**_FP4_GROUP, "group_size": 16, "dynamic": "local"},
        onnx=NotCarried(
            "ONNX Runtime 1.31's CPU provider has no QuantizeLinear to FLOAT4E2M1 (opset "
            "23-25: NOT_IMPLEMENTED), so an NVFP4 KV cache cannot be Q/DQ'd; the Hugging Face "
            "formats carry it (build.backend: hf), verified by fake quant"
        ),
    ),
}


def format_name(method: str, quant: dict[str, Any]) -> str | None:
    """The format a recipe ``quantize`` section produces (None: weights stay unquantized)."""
    if method == "none":
        return None
    if method == "int8_wo":
        return "W8A16"
    if method in ("int4_wo", "gptq"):
        return "W4A16"
    if method == "awq":
        return "W4A16_AWQ"
    if method == "smoothquant":
        if quant.get("activations") == "per_token":
            return "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
        return "W8A8_SQ_PER_CHANNEL"
    if method == "fp8":
        if quant.get("granularity") == "per_channel_per_token":
            return "FP8_PER_CHANNEL_PER_TOKEN"
        return "FP8"
    if method == "fp8_block":
        return "FP8_BLOCK_SCALES"
    if method == "nvfp4":
        return "NVFP4"
    if method == "w4a8_awq":
        return "W4A8_AWQ"
    raise KeyError(f"no format record for method {method!r}")


def why_not(target: Target, fmt: str | None, kv: str | None) -> str | None:
    """Why ``target`` cannot carry this format / KV combination (None: it can)."""
    if fmt is not None:
        mapping = FORMATS[fmt].target(target)
        if isinstance(mapping, NotCarried):
            return f"{fmt}: {mapping.reason}"
    if kv is not None:
        kv_mapping = getattr(KV_FORMATS[kv], target.replace("-", "_"))
        if isinstance(kv_mapping, NotCarried):
            return f"{kv} KV cache: {kv_mapping.reason}"
    return None


def why_not_onnx(fmt: str | None, kv: str | None = None) -> str | None:
    """Why an ONNX engine cannot run this format / KV combination exactly (None: it can)."""
    refusal = FORMATS[fmt].onnx if fmt is not None else None
    if refusal is not None:
        return f"{fmt}: {refusal.reason}"
    kv_refusal = KV_FORMATS[kv].onnx if kv is not None else None
    return f"{kv} KV cache: {kv_refusal.reason}" if kv_refusal is not None else None


def why_not_trtllm_build(fmt: str | None) -> str | None:
    """Why trtllm-build (TensorRT-LLM ≤ 1.2) cannot take this format (None: it can)."""
    refusal = FORMATS[fmt].trtllm_build if fmt is not None else None
    return f"{fmt}: {refusal.reason}" if refusal is not None else None


def carriers(fmt: str | None, kv: str | None) -> list[Target]:
    """The HF targets that can carry the combination."""
    return [t for t in TARGETS if why_not(t, fmt, kv) is None]


def method_table() -> list[tuple[str, str, str, str]]:
    """(method, format, modelopt, compressed-tensors) rows for the docs, from the records."""
    rows = []
    cases = [
        ("int8_wo", {}),
        ("int4_wo", {}),
        ("gptq", {}),
        ("awq", {}),
        ("smoothquant", {"activations": "per_tensor"}),
        ("smoothquant", {"activations": "per_token"}),
        ("fp8", {"granularity": "per_tensor"}),
        ("fp8", {"granularity": "per_channel_per_token"}),
        ("fp8_block", {}),
        ("nvfp4", {}),
        ("w4a8_awq", {}),
    ]
    for method, quant in cases:
        fmt = FORMATS[str(format_name(method, quant))]
        label = method + "".join(f" {v}" for v in quant.values())
        rows.append((label, fmt.name, _cell(fmt.modelopt), _cell(fmt.compressed_tensors)))
    for kv in KV_FORMATS.values():
        rows.append(
            (
                f"kv_cache: {kv.name}",
                kv.trtllm_algo,
                _cell(kv.modelopt),
                _cell(kv.compressed_tensors),
            )
        )
    return rows


def _cell(mapping: Any) -> str:
    if isinstance(mapping, NotCarried):
        return f"no — {mapping.reason}"
    if isinstance(mapping, ModelOpt):
        return f"yes (`{mapping.quant_algo}`)"
    if isinstance(mapping, CompressedTensors):
        return f"yes (`{mapping.format}`)"
    if isinstance(mapping, str):
        return f"yes (`{mapping}`)"
    return "yes (`kv_cache_scheme`)"
