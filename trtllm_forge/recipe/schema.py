"""The recipe schema: strict pydantic v2 models (unknown keys are errors).

Every model's docstring says what the section controls; ``forge recipe schema``
exports the JSON Schema so editors can validate recipes as they are typed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

Dtype = Literal["float32", "float16", "bfloat16"]
KvCache = Literal["none", "int8", "fp8"]
HF_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"


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

    hf: str | None = Field(None, pattern=HF_REPO_PATTERN, description="Hub repo id `org/name`.")
    revision: str | None = Field(
        None, min_length=1, max_length=256, description="Branch, tag or commit of `hf` (default: main)."
    )
    path: str | None = Field(
        None, min_length=1, description="Local HF-format directory (relative to the recipe file)."
    )
    gguf: str | None = Field(
        None, min_length=1, description="Local GGUF file, dequantized with transformers' GGUF loader."
    )
    allow_pickle: bool = Field(
        False, description="Allow pickle weights (`.bin`, `.pt`). Pickle can run code: off by default."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("hf", "path", "gguf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `hf`, `path` or `gguf`" + (f" (got {', '.join(given)})" if given else "")
            )
        if self.revision is not None and self.hf is None:
            raise ValueError("`revision` only applies to `hf` sources")
        return self


class Convert(_Strict):
    """HF → canonical TensorRT-LLM checkpoint. `dtype` is the stored dtype of unquantized weights."""

    dtype: Dtype = "float16"


class Calibration(_Strict):
    """Calibration text: the built-in corpus, or a `.txt` / `.jsonl` (field `text`) file."""

    file: str | None = Field(None, min_length=1, description="Text file relative to the recipe; default: built-in corpus.")
    samples: int = Field(64, ge=1, le=100_000)
    seq_len: int = Field(256, ge=8, le=131_072)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class _QuantBase(_Strict):
    kv_cache: KvCache = Field("none", description="KV-cache quantization (needs calibration).")
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["lm_head"],
        description="fnmatch patterns of TensorRT-LLM module names left unquantized.",
    )
    calibration: Calibration = Field(default_factory=Calibration)


class NoQuant(_QuantBase):
    """No weight quantization (KV-cache quantization is still allowed)."""

    method: Literal["none"] = "none"


class Int8WeightOnly(_QuantBase):
    """INT8 per-channel weight-only (W8A16)."""

    method: Literal["int8_wo"]


class Int4WeightOnly(_QuantBase):
    """INT4 group-wise weight-only, round-to-nearest (W4A16)."""

    method: Literal["int4_wo"]
    group_size: Literal[32, 64, 128] = 128


class SmoothQuant(_QuantBase):
    """SmoothQuant W8A8: per-channel INT8 weights, INT8 activations after smoothing."""

    method: Literal["smoothquant"]
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    activations: Literal["per_tensor", "per_token"] = "per_tensor"


class Awq(_QuantBase):
    """AWQ INT4 group-wise (W4A16_AWQ)."""

    method: Literal["awq"]
    group_size: Literal[32, 64, 128] = 128


class Gptq(_QuantBase):
    """GPTQ INT4 group-wise (W4A16_GPTQ)."""

    method: Literal["gptq"]
    group_size: Literal[32, 64, 128] = 128
    damping: float = Field(0.01, gt=0.0, le=1.0)
    act_order: bool = False


class Fp8(_QuantBase):
    """FP8 E4M3 W8A8: per-tensor scales, or per-channel weights with per-token activations."""

    method: Literal["fp8"]
    granularity: Literal["per_tensor", "per_channel_per_token"] = "per_tensor"


Quantize = Annotated[
    NoQuant | Int8WeightOnly | Int4WeightOnly | SmoothQuant | Awq | Gptq | Fp8,
    Field(discriminator="method"),
]
QUANT_METHODS = ("none", "int8_wo", "int4_wo", "smoothquant", "awq", "gptq", "fp8")


class Parallel(_Strict):
    """Tensor- and pipeline-parallel sizes; one engine per rank (rank = pp_rank·tp + tp_rank)."""

    tp: int = Field(1, ge=1, le=256)
    pp: int = Field(1, ge=1, le=256)


class Build(_Strict):
    """Engine backend and limits.

    `onnxruntime` runs anywhere; `tensorrt` needs TensorRT and a CUDA GPU; `trtllm` runs
    `trtllm-build` from TensorRT-LLM ≤ 1.2 on the exported checkpoint.
    """

    backend: Literal["onnxruntime", "tensorrt", "trtllm"] = "onnxruntime"
    max_batch_size: int = Field(8, ge=1, le=4096)
    max_input_len: int = Field(512, ge=1, le=1_048_576)
    max_seq_len: int = Field(1024, ge=2, le=1_048_576)
    plugins: dict[Annotated[str, Field(min_length=1, max_length=64)], str | bool] = Field(
        default_factory=dict, description="Backend plugin switches, validated per backend."
    )
    opt_level: int = Field(3, ge=0, le=5, description="TensorRT builder optimization level.")
    workspace_gb: float = Field(4.0, gt=0, le=1024, description="TensorRT builder workspace limit.")

    @model_validator(mode="after")
    def _limits(self) -> Build:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be less than max_seq_len ({self.max_seq_len})"
            )
        return self


class Gates(_Strict):
    """Verify thresholds; a failed gate makes `forge build` exit 3. Unset gates are reported only."""

    min_token_agreement: float | None = Field(None, ge=0.0, le=1.0)
    min_top1: float | None = Field(None, ge=0.0, le=1.0)
    max_kl: float | None = Field(None, ge=0.0)
    max_ppl_ratio: float | None = Field(None, ge=1.0)
    max_rel_logit_diff: float | None = Field(None, ge=0.0)


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

    enabled: bool = True
    prompts: list[Annotated[str, Field(min_length=1, max_length=100_000)]] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1, max_length=1024
    )
    max_new_tokens: int = Field(32, ge=1, le=4096)
    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Held-out texts for KL / top-1 / perplexity (default: built-in)."
    )
    text_file: str | None = Field(None, min_length=1, description="A held-out text file relative to the recipe.")
    max_text_tokens: int = Field(512, ge=8, le=1_048_576)
    gates: Gates = Field(default_factory=Gates)


class Recipe(_Strict):
    """A forge recipe: the single source of truth for one engine build."""

    schema_version: Literal[1] = Field(description="Recipe schema version; currently 1.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    source: Source
    convert: Convert = Field(default_factory=Convert)
    quantize: Quantize = Field(default_factory=NoQuant)
    parallel: Parallel = Field(default_factory=Parallel)
    build: Build = Field(default_factory=Build)
    verify: Verify = Field(default_factory=Verify)
