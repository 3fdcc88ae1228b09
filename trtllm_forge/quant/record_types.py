"""The record types a quantization method declares itself with (no torch, no pydantic).

A method module (``quant/<method>.py``) holds one :class:`Method`: its parameters, the
:class:`QuantFormat` it stores, and that format's mapping into each output — the
TensorRT-LLM checkpoint, ModelOpt's and compressed-tensors' Hugging Face folders, the
fake-quant oracle, the ONNX lowering — as data, or as a hook the generic module calls,
or as :class:`NotCarried` with the reason a target refuses it. The generic modules
(``records``, ``formats``, ``fakequant``, ``hf/*_target``, ``engine/onnx``) read these
records instead of naming formats. Hooks import torch only when they run, so
``forge plan`` reads every record without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

# Types only (the hooks' signatures): defining Protocols costs import time that
# `forge plan`, which reads the records, would pay for nothing.
if TYPE_CHECKING:
    from typing import Protocol

    import torch

    from trtllm_forge.quant.result import LinearQuant

    Tensors = dict[str, "torch.Tensor"]
    # (fused linear, is it a row layer, checkpoint dtype) -> TensorRT-LLM tensors of the module.
    TrtllmTensors = Callable[["LinearQuant", bool, "torch.dtype"], Tensors]
    # (fused linear, checkpoint dtype) -> the HF target's tensors of the linear.
    HfTensors = Callable[["LinearQuant", "torch.dtype"], Tensors]

    class TensorSource(Protocol):
        """What fake quant reads a checkpoint through (``checkpoint.io.CheckpointReader``)."""

        def has(self, name: str, rank: int = 0) -> bool: ...

        def get(self, name: str, rank: int = 0) -> torch.Tensor: ...

        def shape(self, name: str, rank: int = 0) -> tuple[int, ...]: ...

    # (checkpoint, module) -> float32 [out, in] weight the module computes with.
    FakeWeight = Callable[[TensorSource, str], "torch.Tensor"]
    # (checkpoint, module) -> the module's input quantizer, built once per module.
    FakeInput = Callable[[TensorSource, str], Callable[["torch.Tensor"], "torch.Tensor"]]

    class OnnxOps(Protocol):
        """What a format's ONNX lowering builds one quantized linear with (implemented by
        ``engine/onnx/quant_lowering.py``); values are graph value names, ``param`` names a
        tensor the module stores (reading it marks it used)."""

        module: str
        in_features: int
        out_features: int

        def tensor(self, param: str) -> torch.Tensor: ...

        def constant(self, param: str, value: torch.Tensor) -> str: ...

        def scalar(self, param: str) -> str: ...

        def stored_weight_t(self) -> str: ...

        def mul_input(self, x: str, param: str) -> str: ...

        def qdq_static(self, x: str, scale: str, dtype: str, hint: str) -> str: ...

        def qdq_per_group(self, x: str, group: int, dtype: str, hint: str) -> str: ...

        def qdq_per_token(self, x: str, dtype: str, hint: str) -> str: ...

        def div_input(self, x: str, param: str) -> str: ...

        def dq_per_column(self, param: str) -> str: ...

        def consume(self, name: str) -> None: ...

        def int4_groups(self) -> str: ...

        def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str: ...

        def matmul(self, x: str, w: str) -> str: ...

    OnnxLowering = Callable[[OnnxOps, str], str]
    # (max |K|, max |V|) -> the (K, V) scales of the canonical checkpoint.
    KvScales = Callable[[float, float], tuple["torch.Tensor", "torch.Tensor"]]
    # (cache, its per-tensor scale) -> the cache Q/DQ'd.
    KvFakeQuant = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
    # (max |K|, max |V|, checkpoint dtype) -> the attention's compressed-tensors tensors.
    KvHfTensors = Callable[[float, float, "torch.dtype"], Tensors]

Target = Literal["modelopt", "compressed-tensors"]
# What happens to a quantized linear's input, as the generic fake quant and lowering
# implement it; "own": the record's fake_input and onnx_lowering (or onnx refusal) do.
Activations = Literal["none", "static_int8", "static_fp8", "per_token_int8", "per_token_fp8", "own"]
TARGETS: tuple[Target, ...] = ("modelopt", "compressed-tensors")

# Records are NamedTuples (immutable, like frozen dataclasses): a dataclass compiles four
# generated functions per record type at import, which `forge plan` (it imports every
# method's record) would pay for; a NamedTuple compiles one. Nothing hashes a record
# (some hold dicts).


class NotCarried(NamedTuple):
    """A target that cannot hold the format, and why (quoted in the plan-time error)."""

    reason: str


class ModelOpt(NamedTuple):
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
        block_size: a fixed ``group_size`` written alone (the format's block), or None.
        linear_tensors: builds the linear's tensors (``input_scale`` of static-range
            activations and ``pre_quant_scale`` are added by the writer unless the hook
            wrote them); None: ``hf/modelopt_target.py``'s built-in formats.
        numerics: config.json ``quantization_config.config_groups`` numerics ModelOpt
            writes for the format, or None (it writes none).
    """

    quant_algo: str
    tensors: tuple[str, ...]
    share_input: bool = True
    fold_pre_quant_scale: bool = False
    group_fields: bool = False
    block_size: int | None = None
    linear_tensors: HfTensors | None = None
    numerics: Mapping[str, Any] | None = None


class CompressedTensors(NamedTuple):
    """A compressed-tensors ``config_groups`` entry and the compressor ``format``.

    ``weights`` / ``input_activations`` are ``QuantizationArgs`` fields; ``group_size``
    and ``actorder`` are filled from the method's parameters, or ``group_size`` is the
    format's fixed one. ``linear_tensors`` builds the linear's tensors (None:
    ``hf/ct_target.py``'s built-in formats). ``load_dtype``: the dtype a folder must be
    loaded in for compressed-tensors' decompression to run (None: float32).
    """

    format: str
    weights: dict[str, Any]
    input_activations: dict[str, Any] | None
    tensors: tuple[str, ...]
    linear_tensors: HfTensors | None = None
    group_size: int | None = None
    load_dtype: str | None = None


class QuantFormat(NamedTuple):
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
            or ``own`` (the record's ``fake_input`` and ``onnx_lowering`` quantize it).
        weight_bits: bits per stored weight value (scales apart), for size estimates.
        trtllm_share_input: in the canonical checkpoint, fc and gate (one input) share
            input-side quantities — FP8 because TensorRT-LLM fuses the two GEMMs, the
            SmoothQuant plugin because one norm carries the smoothing for both.
        folds_smoothing_into_norm: column layers' smoothing lives in the norm before them.
        onnx: why an ONNX engine (ONNX Runtime, TensorRT) cannot run the format exactly,
            or None when it is lowered (``onnx_lowering`` or engine/onnx/quant_lowering.py).
        trtllm_build: why TensorRT-LLM ≤ 1.2's ``trtllm-build`` cannot take the canonical
            checkpoint (``build.backend: trtllm``, ``forge export trtllm-ckpt``), or None.
        trtllm_writer: builds the canonical tensors of one linear (None: quant/formats.py's
            built-in builder for ``trtllm_algo``).
        fake_weight / fake_input: what the canonical checkpoint computes, for fake quant
            (None: quant/fakequant.py's built-in rules).
        onnx_lowering: the linear's ONNX graph (None: engine/onnx/quant_lowering.py's
            built-in lowering, or ``onnx`` says why there is none).
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
    weight_bits: int = 8
    trtllm_share_input: bool = False
    folds_smoothing_into_norm: bool = False
    onnx: NotCarried | None = None
    trtllm_build: NotCarried | None = None
    trtllm_writer: TrtllmTensors | None = None
    fake_weight: FakeWeight | None = None
    fake_input: FakeInput | None = None
    onnx_lowering: OnnxLowering | None = None

    def target(self, target: Target) -> ModelOpt | CompressedTensors | NotCarried:
        return self.modelopt if target == "modelopt" else self.compressed_tensors


def _no_fields(params: Any) -> dict[str, Any]:
    return {}


class KvFormat(NamedTuple):
    """A KV-cache format: recipe name, TensorRT-LLM algo, and each HF target's spelling.

    ``qmax`` turns a cache's calibrated max |K| or |V| into the HF targets' scale
    (amax / qmax; ModelOpt writes amax / 448 for FP8 and NVFP4 alike). ``onnx`` says why
    an ONNX engine cannot run the format exactly, or None when engine/onnx/quant_lowering.py
    does. The hooks (None: the generic INT8 / FP8 rules, amax / qmax) give the canonical
    checkpoint's per-cache scales (``trtllm_scales``, before TensorRT-LLM's shared
    ``kv_cache_scaling_factor``, their max), the cache's fake quant under such a scale
    (``fake_quant``), and the compressed-tensors attention tensors (``ct_tensors``).
    """

    name: str
    trtllm_algo: str
    qmax: float
    modelopt: str | NotCarried  # hf_quant_config kv_cache_quant_algo
    compressed_tensors: dict[str, Any] | NotCarried  # kv_cache_scheme
    onnx: NotCarried | None = None
    trtllm_scales: KvScales | None = None
    fake_quant: KvFakeQuant | None = None
    ct_tensors: KvHfTensors | None = None


class Method(NamedTuple):
    """One quantization method, as its module declares it (``METHOD``).

    Attributes:
        name: recipe name (``quantize.method``); its recipe section (recipe/schema.py,
            the one whose ``method`` is this name) declares the parameters, and
            quant/params.py builds the parameter model from it when parameters are
            first validated (pydantic models cost time to build, and ``forge plan``
            reads the records without validating).
        needs_data: whether weights need calibration text (KV-cache calibration always does).
        uses_modelopt: whether the algorithm runs through nvidia-modelopt (its version
            then keys the calibrate stage).
        formats: the formats the method stores (most methods: one); the selected one's
            ``trtllm_algo`` is the checkpoint's ``quant_algo``.
        format_of: the format name a recipe ``quantize`` section (or the validated
            parameters, dumped) selects, None for unquantized weights; left None: the
            only format.
        quantization_fields: the checkpoint config's ``quantization`` keys beyond
            quant_algo / kv_cache_quant_algo / exclude_modules, from the parameters.
        doc_cases: the ``quantize`` sections docs/outputs.md's table shows a row for.
        linear_misfit: why the format cannot store a linear of ``(params, out_features,
            in_features)`` — (message, hint) — or None; checked before any weight loads.
        check_plan: ``(params, target plan, config.json)`` raises a recipe error for a
            plan the method cannot calibrate (before any weight loads), or None.
    """

    name: str
    needs_data: bool
    uses_modelopt: bool
    formats: tuple[QuantFormat, ...]
    format_of: Callable[[Mapping[str, Any]], str | None] | None = None
    quantization_fields: Callable[[Any], dict[str, Any]] = _no_fields
    doc_cases: tuple[Mapping[str, Any], ...] = ({},)
    linear_misfit: Callable[[Any, int, int], tuple[str, str] | None] | None = None
    check_plan: Callable[[Any, Any, Mapping[str, Any]], None] | None = None

    def format_name(self, quant: Mapping[str, Any]) -> str | None:
        return self.format_of(quant) if self.format_of else self.formats[0].name

    def quant_algo(self, quant: Mapping[str, Any]) -> str | None:
        name = self.format_name(quant)
        return next((f.trtllm_algo for f in self.formats if f.name == name), None)


# compressed-tensors QuantizationArgs shared by several formats.
FP8_ARGS: Mapping[str, Any] = {"num_bits": 8, "type": "float", "symmetric": True}
PRE_QUANT_IN_CT = (
    "compressed-tensors has no per-input-channel activation scale: the pre-quant scale of "
    "o_proj/down_proj (whose inputs have no norm to fold it into) cannot be stored"
)
