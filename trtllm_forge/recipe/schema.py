"""The recipe schema: strict pydantic v2 models (unknown keys are errors).

Every model's docstring says what the section controls; ``forge recipe schema``
exports the JSON Schema so editors can validate recipes as they are typed.
"""

# No `from __future__ import annotations` here: with it every field annotation is a string
# that pydantic compiles (typing.ForwardRef) and evaluates on every `forge` run.
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

from trtllm_forge.rules import lengths_problem
from trtllm_forge.thirdparty import stand_in_pydantic_plugin_loader

stand_in_pydantic_plugin_loader()  # before the first model below (thirdparty.py says why)

SCHEMA_VERSION = 1

Dtype = Literal["float32", "float16", "bfloat16"]
KvCache = Literal["none", "int8", "fp8", "nvfp4"]
HF_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"


def _empty_dict() -> dict[str, str | bool]:
    # Not `dict` itself: pydantic inspects a default factory's signature, and a builtin's
    # is parsed from its text signature with tokenize, whose large regex is then compiled
    # on every `forge` run.
    return {}


def _empty_list() -> list[str]:
    return []  # not `list`: see _empty_dict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Source(_Strict):
    """Where the Hugging Face checkpoint comes from: exactly one of `hf`, `path`, `gguf`.

    ```yaml
    source:
      hf: meta-llama/Llama-2-7b-hf
      revision: main
    ```
    """

    hf: str | None = Field(
        default=None, pattern=HF_REPO_PATTERN, description="Hub repo id `org/name`."
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Branch, tag or commit of `hf` (default: main).",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="Local HF-format directory (relative to the recipe file).",
    )
    gguf: str | None = Field(
        default=None,
        min_length=1,
        description="Local GGUF file, dequantized with transformers' GGUF loader.",
    )
    allow_pickle: bool = Field(
        default=False,
        description="Allow pickle weights (`.bin`, `.pt`): fetch loads them with torch.load"
        "(weights_only=True) and stores safetensors, so no later stage reads pickle. Off by"
        " default: unpickling is still an attack surface.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        given = [k for k in ("hf", "path", "gguf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `hf`, `path` or `gguf`"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.revision is not None and self.hf is None:
            raise ValueError("`revision` only applies to `hf` sources")
        return self


class Convert(_Strict):
    """HF → canonical TensorRT-LLM checkpoint. `dtype` is the stored dtype of unquantized weights."""

    dtype: Dtype = Field(
        default="float16",
        description="Stored dtype of unquantized weights: float32, float16 or bfloat16.",
    )


class Calibration(_Strict):
    """Calibration text (the built-in corpus, or a `.txt` / `.jsonl` file with field `text`),
    and where the calibration passes run.

    ```yaml
    quantize:
      method: awq
      calibration: {samples: 128, device: cuda, dtype: float16}
    ```
    """

    file: str | None = Field(
        default=None,
        min_length=1,
        description="Text file relative to the recipe; default: built-in corpus.",
    )
    samples: int = Field(
        default=64, ge=1, le=100_000, description="Number of calibration sequences."
    )
    seq_len: int = Field(
        default=256, ge=8, le=131_072, description="Tokens per calibration sequence."
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed for choosing the sequences.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu",
        description="Where calibration runs: `cpu`, `cuda` (exit 4 without a CUDA GPU) or "
        "`auto` (cuda when available). Part of the cache key (resolved, so `auto` keys as "
        "what it chose).",
    )
    dtype: Dtype = Field(
        default="float32",
        description="Compute dtype of the model while calibrating (`float16` is the usual "
        "GPU choice). Part of the cache key; cpu + float32 keys as before the field existed.",
    )
    mode: Literal["whole", "layerwise"] = Field(
        default="whole",
        description="`whole` loads the model once and calibrates it; `layerwise` loads one "
        "decoder layer at a time from the memory-mapped snapshot, commits each finished "
        "layer (a killed build resumes at the next one) and gives the same tensors. Methods "
        "and families it cannot walk yet are refused at plan time. `layerwise` is part of "
        "the cache key; `whole` keys as before the field existed.",
    )


class _QuantBase(_Strict):
    kv_cache: KvCache = Field(
        default="none", description="KV-cache quantization (needs calibration)."
    )
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["lm_head"],
        description="fnmatch patterns of TensorRT-LLM module names left unquantized.",
    )
    calibration: Calibration = Field(default_factory=Calibration)


class _WeightOnlyQuant(_QuantBase):
    quantize_lm_head: bool = Field(
        default=False,
        description="Also quantize lm_head (round-to-nearest, in the method's weight format) "
        "as onnxruntime-genai's builder does for int4: each decode step then streams a 4- or "
        "8-bit head instead of a float one (docs/engine-performance.md). `build.profile: ort` "
        "only (refused elsewhere at plan time); `exclude` does not govern lm_head.",
    )


class NoQuant(_QuantBase):
    """No weight quantization (KV-cache quantization is still allowed)."""

    method: Literal["none"] = Field(default="none", description="Quantization method.")


class Int8WeightOnly(_WeightOnlyQuant):
    """INT8 per-channel weight-only (W8A16)."""

    method: Literal["int8_wo"] = Field(description="Quantization method.")


class Int4WeightOnly(_WeightOnlyQuant):
    """INT4 group-wise weight-only, round-to-nearest (W4A16)."""

    method: Literal["int4_wo"] = Field(description="Quantization method.")
    group_size: Literal[32, 64, 128] = Field(
        default=128, description="Input channels sharing one scale."
    )


class SmoothQuant(_QuantBase):
    """SmoothQuant W8A8: per-channel INT8 weights, INT8 activations after smoothing."""

    method: Literal["smoothquant"] = Field(description="Quantization method.")
    alpha: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Migration strength (0: none, 1: all to weights)."
    )
    activations: Literal["per_tensor", "per_token"] = Field(
        default="per_tensor",
        description="Activation scale granularity: one static scale, or dynamic per token.",
    )


class Awq(_WeightOnlyQuant):
    """AWQ INT4 group-wise (W4A16_AWQ)."""

    method: Literal["awq"] = Field(description="Quantization method.")
    group_size: Literal[32, 64, 128] = Field(
        default=128, description="Input channels sharing one scale."
    )


class Gptq(_WeightOnlyQuant):
    """GPTQ INT4 group-wise (W4A16_GPTQ)."""

    method: Literal["gptq"] = Field(description="Quantization method.")
    group_size: Literal[32, 64, 128] = Field(
        default=128, description="Input channels sharing one scale."
    )
    damping: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="Hessian dampening, as a fraction of its mean diagonal.",
    )
    act_order: bool = Field(
        default=False, description="Quantize columns in order of decreasing activation energy."
    )


class Fp8(_QuantBase):
    """FP8 E4M3 W8A8: per-tensor scales, or per-channel weights with per-token activations."""

    method: Literal["fp8"] = Field(description="Quantization method.")
    granularity: Literal["per_tensor", "per_channel_per_token"] = Field(
        default="per_tensor", description="Scale granularity of weights / activations."
    )


class W4A8Awq(_QuantBase):
    """W4A8 AWQ: AWQ-smoothed INT4 group-wise weights run as FP8, static FP8 activations
    (W4A8_AWQ)."""

    method: Literal["w4a8_awq"] = Field(description="Quantization method.")
    group_size: Literal[32, 64, 128] = Field(
        default=128, description="Input channels sharing one scale."
    )


class Fp8Block(_QuantBase):
    """FP8 E4M3 weights with one scale per block × block tile, dynamic per-token-group
    activations (FP8_BLOCK_SCALES, DeepSeek-style)."""

    method: Literal["fp8_block"] = Field(description="Quantization method.")
    # TensorRT-LLM's and vLLM's block-FP8 kernels run 128 × 128 only; 32 and 64 exist for
    # models whose sizes 128 does not divide (the tiny test model, SmolLM2's 576).
    block_size: Literal[32, 64, 128] = Field(
        default=128,
        description="Tile edge (and activation channel group); serving kernels run 128 only.",
    )


class NvFp4(_QuantBase):
    """NVFP4 W4A4 (FP4 E2M1 in blocks of 16, FP8 block scales, FP32 global scales); Hugging
    Face targets only (build.backend: hf): no ONNX runtime executes FP4 activations."""

    method: Literal["nvfp4"] = Field(description="Quantization method.")


# Each method's recipe section, listed once here; quant/params.py builds the method's
# parameter model from the fields a section adds to the common ones (method_fields).
Quantize = Annotated[
    NoQuant
    | Int8WeightOnly
    | Int4WeightOnly
    | SmoothQuant
    | Awq
    | Gptq
    | Fp8
    | Fp8Block
    | NvFp4
    | W4A8Awq,
    Field(discriminator="method"),
]
QUANTIZE_SECTIONS: tuple[type[_QuantBase], ...] = get_args(get_args(Quantize)[0])


def method_name(section: type[BaseModel]) -> str:
    """The ``method`` value a quantize section is chosen by."""
    return str(section.model_fields["method"].annotation.__args__[0])  # type: ignore[union-attr]


# What every quantize section has (the method and its settings apart from the method's own).
QUANTIZE_COMMON_FIELDS = frozenset(NoQuant.model_fields)


def method_fields(section: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields a quantize section adds to the common ones: the method's parameters."""
    fields = section.model_fields.items()
    return {name: info for name, info in fields if name not in QUANTIZE_COMMON_FIELDS}


QUANT_METHODS: tuple[str, ...] = tuple(method_name(section) for section in QUANTIZE_SECTIONS)


class Parallel(_Strict):
    """Tensor- and pipeline-parallel sizes; one engine per rank (rank = pp_rank·tp + tp_rank)."""

    tp: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Tensor-parallel size (must divide the attention heads).",
    )
    pp: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Pipeline-parallel size (at most the number of layers).",
    )


class Build(_Strict):
    """Engine backend and limits.

    `onnxruntime` runs anywhere; `tensorrt` needs TensorRT and a CUDA GPU; `trtllm` runs
    `trtllm-build` from TensorRT-LLM ≤ 1.2 on the exported checkpoint; `hf` writes a
    quantized Hugging Face folder in `format` (docs/outputs.md).

    ```yaml
    build:
      backend: hf
      format: compressed-tensors
    ```
    """

    backend: Literal["onnxruntime", "tensorrt", "trtllm", "hf"] = Field(
        default="onnxruntime",
        description="Engine backend, or `hf` for a quantized Hugging Face folder.",
    )
    format: Literal["modelopt", "compressed-tensors"] | None = Field(
        default=None,
        description="With backend `hf` (and only then): `modelopt` (ModelOpt's unified "
        "checkpoint: TensorRT-LLM, vLLM, SGLang) or `compressed-tensors` (vLLM, transformers, "
        "TensorRT-LLM for FP8). A quantization the format cannot carry is refused at plan time.",
    )
    profile: Literal["portable", "ort"] = Field(
        default="portable",
        description="ONNX lowering: `portable` (standard ops; the oracle and TensorRT's input) "
        "or `ort` (ONNX Runtime contrib ops: GroupQueryAttention, SkipSimplifiedLayerNormalization, "
        "MatMulNBits; Llama/Mistral/Qwen2, none/int8_wo/int4_wo/awq/gptq, tp = pp = 1, "
        "backend onnxruntime; anything else is refused at plan time).",
    )
    int8_activations: bool = Field(
        default=False,
        description="`ort` profile, int4/int8 weight-only: MatMulNBits quantizes activations "
        "to int8 per block on the CPU (accuracy_level 4, onnxruntime-genai's CPU default): "
        "faster GEMMs, slightly different logits (verify gates apply). Off: float activations, "
        "the portable graph's numbers.",
    )
    compute_dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="`ort` profile: compute and KV-cache dtype. float32 for CPUs; float16 for "
        "CUDA (GroupQueryAttention's CUDA kernel takes float16, not float32). The portable "
        "graph always computes in float32.",
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=4096, description="Largest batch the engine accepts."
    )
    max_input_len: int = Field(
        default=512, ge=1, le=1_048_576, description="Longest prompt, in tokens."
    )
    max_seq_len: int = Field(
        default=1024, ge=2, le=1_048_576, description="Longest prompt + generated sequence."
    )
    plugins: dict[Annotated[str, Field(min_length=1, max_length=64)], str | bool] = Field(
        default_factory=_empty_dict, description="Backend plugin switches, validated per backend."
    )
    opt_level: int = Field(
        default=3, ge=0, le=5, description="TensorRT builder optimization level."
    )
    workspace_gb: float = Field(
        default=4.0, gt=0, le=1024, description="TensorRT builder workspace limit."
    )

    @model_validator(mode="after")
    def _limits(self) -> "Build":
        if (self.backend == "hf") != (self.format is not None):
            raise ValueError(
                "`format` goes with backend `hf`, and backend `hf` needs a `format` "
                "(modelopt or compressed-tensors)"
            )
        problem = lengths_problem(self.max_input_len, self.max_seq_len)
        if problem:
            raise ValueError(problem)
        return self


class Gates(_Strict):
    """Verify thresholds; a failed gate makes `forge build` exit 3. Unset gates are reported only."""

    min_token_agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Fraction of greedy tokens equal to the reference's.",
    )
    min_top1: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Top-1 agreement over the texts."
    )
    max_kl: float | None = Field(
        default=None, ge=0.0, description="Mean per-token KL(reference ‖ engine), nats."
    )
    max_ppl_ratio: float | None = Field(
        default=None, ge=1.0, description="Engine / reference perplexity."
    )
    max_rel_logit_diff: float | None = Field(
        default=None, ge=0.0, description="max |logit diff| / max |reference logit| over the texts."
    )


DEFAULT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The three primary colors are",
    "import numpy as np\n",
    "Water boils at a temperature of",
    "In 1969, the first person to walk on the moon",
    "The quick brown fox",
]


class Verify(_Strict):
    """Compare the engine with the transformers reference on the original weights."""

    enabled: bool = Field(default=True, description="Run verification at all.")
    prompts: list[Annotated[str, Field(min_length=1, max_length=100_000)]] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        min_length=1,
        max_length=1024,
        description="Prompts for the greedy token-agreement check (default: 8 built-in prompts).",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=4096, description="Greedy tokens generated per prompt."
    )
    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=_empty_list,
        description="Held-out texts for KL / top-1 / perplexity (default: built-in).",
    )
    text_file: str | None = Field(
        default=None, min_length=1, description="A held-out text file relative to the recipe."
    )
    max_text_tokens: int = Field(
        default=512, ge=8, le=1_048_576, description="Tokens scored per text."
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu",
        description="Where verify runs: cuda = the reference on torch's CUDA device and the "
        "engine on ONNX Runtime's CUDAExecutionProvider (needs a GPU, a CUDA build of torch "
        "and onnxruntime-gpu; checked before any stage runs).",
    )
    gates: Gates = Field(default_factory=Gates, description="Pass/fail thresholds.")


class Recipe(_Strict):
    """A forge recipe: the single source of truth for one engine build."""

    schema_version: Literal[1] = Field(description="Recipe schema version; currently 1.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Recipe name (letters, digits, . _ -).",
    )
    source: Source = Field(description="Where the checkpoint comes from.")
    convert: Convert = Field(
        default_factory=Convert, description="Conversion to the canonical checkpoint."
    )
    quantize: Quantize = Field(
        default_factory=NoQuant, description="Quantization method and its parameters."
    )
    parallel: Parallel = Field(
        default_factory=Parallel, description="Tensor/pipeline parallel sizes."
    )
    build: Build = Field(default_factory=Build, description="Engine backend and limits.")
    verify: Verify = Field(
        default_factory=Verify, description="Engine-vs-reference checks and gates."
    )
