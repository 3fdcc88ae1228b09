"""What an architecture family declares: its config translation and its tensor table.

A family turns a Hugging Face ``config.json`` dict into a TensorRT-LLM
``config.json`` dict and lists, as data, how every TensorRT-LLM tensor is made
from HF tensors (:class:`TensorRule`). The converter executes the table; the
totality check proves the table covers the source exactly (style.md P10).

Nothing here imports torch: recipe checks call :func:`model_dims` and
:func:`validate_dims` on the CLI start path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trtllm_forge.errors import ExitCode, ForgeError, recipe_error, source_error

# identity: one source as is. concat_rows: sources stacked along dim 0 (q; k; v).
# transpose: one 2-D source stored [in, out] (GPT-2 Conv1D) written [out, in].
# qkv_interleaved: one fused QKV source whose rows are grouped per head as [heads, 3, d]
#   (GPT-NeoX); written as contiguous q, k, v blocks (docs/trtllm-checkpoint.md §3.2).
#   ``heads`` is set.
# add_one: one source plus 1.0 (Gemma RMSNorm stores w and computes x·(1 + w)).
# qkv_grouped: one fused QKV source grouped per KV head as [kv_heads, heads/kv_heads + 2, d]
#   (Falcon: each group's query heads, then its k head, then its v head); written as
#   contiguous q, k, v blocks. ``heads`` and ``kv_heads`` are set.
# row_block: block ``block`` of ``blocks`` equal row blocks of one source (Phi-3's fused
#   gate_up_proj is [gate; up]: mlp.fc is block 0 of 2, mlp.gate block 1).
# normalize_rows: one source whose rows are divided by their L2 norm (Baichuan 2's NormHead
#   normalizes the lm_head rows before every use, so the checkpoint stores them normalized).
Fusion = Literal[
    "identity",
    "concat_rows",
    "transpose",
    "qkv_interleaved",
    "add_one",
    "qkv_grouped",
    "row_block",
    "normalize_rows",
]

# Limits far above any real model; they exist so a typo (hidden_size 10**12) fails in
# microseconds with a message instead of in an out-of-memory kill.
MAX_HIDDEN = 1 << 17
MAX_LAYERS = 10_000
MAX_HEADS = 4096
MAX_VOCAB = 100_000_000
MAX_INTERMEDIATE = 1 << 20
MAX_POSITIONS = 1 << 24


@dataclass(frozen=True)
class TensorRule:
    """One TensorRT-LLM tensor: its name, the HF tensors it is made of, and how.

    ``concat_rows`` concatenates the sources along dim 0 in the given order
    (fused QKV = [q; k; v]).
    """

    target: str
    sources: tuple[str, ...]
    fusion: Fusion = "identity"
    heads: int = 0  # qkv_interleaved only: number of heads of the fused source
    kv_heads: int = 0  # qkv_grouped only (with heads): number of KV heads = groups
    block: int = 0  # row_block only: which block of ``blocks`` equal row blocks
    blocks: int = 0

    def __post_init__(self) -> None:
        if self.fusion != "concat_rows" and len(self.sources) != 1:
            raise ValueError(f"{self.fusion} rule for {self.target} needs exactly one source")
        if self.fusion == "qkv_interleaved" and self.heads <= 0:
            raise ValueError(f"qkv_interleaved rule for {self.target} needs heads > 0")
        if self.fusion == "row_block" and not 0 <= self.block < self.blocks:
            raise ValueError(f"row_block rule for {self.target} needs 0 <= block < blocks")

    @property
    def streams_bytes(self) -> bool:
        """Whether the output is its sources' bytes in order (no arithmetic, no reordering)."""
        return self.fusion in ("identity", "concat_rows")

    def row_order(self, rows: int) -> list[int] | None:
        """Source row index of each output row, when the rule reorders rows; else None.

        ``qkv_interleaved``: source rows are ``[head, (q|k|v), d]``; output rows are
        all q heads, then all k heads, then all v heads.
        """
        if self.fusion == "qkv_grouped":
            return grouped_qkv_order(rows, self.heads, self.kv_heads)
        if self.fusion == "row_block":  # fewer output rows than source rows: a slice
            size = rows // self.blocks
            return list(range(self.block * size, (self.block + 1) * size))
        if self.fusion != "qkv_interleaved":
            return None
        size = rows // (3 * self.heads)
        return [
            (head * 3 + part) * size + i
            for part in range(3)
            for head in range(self.heads)
            for i in range(size)
        ]


def grouped_qkv_order(rows: int, heads: int, kv_heads: int) -> list[int]:
    """Row order turning Falcon's ``[kv_heads, heads/kv_heads + 2, d]`` rows into [q; k; v].

    Group ``g`` holds query heads ``g·per .. g·per + per - 1``, then KV head ``g``'s
    key, then its value (docs/trtllm-checkpoint.md §3.2, Falcon).
    """
    per = heads // kv_heads
    size = rows // (heads + 2 * kv_heads)

    def block(group: int, slot: int) -> range:
        start = (group * (per + 2) + slot) * size
        return range(start, start + size)

    q = [r for g in range(kv_heads) for j in range(per) for r in block(g, j)]
    k = [r for g in range(kv_heads) for r in block(g, per)]
    v = [r for g in range(kv_heads) for r in block(g, per + 1)]
    return q + k + v


@dataclass(frozen=True)
class TensorPlan:
    """The full table for one concrete config: rules plus names to ignore."""

    rules: tuple[TensorRule, ...]
    ignored: tuple[re.Pattern[str], ...] = field(default=())

    def check_total(self, source_names: Iterable[str], *, architecture: str) -> None:
        """Every source tensor is used or ignored, and every rule's sources exist."""
        available = set(source_names)
        used = {s for rule in self.rules for s in rule.sources}
        missing = sorted(used - available)
        if missing:
            raise source_error(
                f"{architecture} checkpoint is missing {len(missing)} tensor(s): {_first(missing)}",
                hint="the checkpoint is incomplete or its config.json does not match its weights",
            )
        leftover = sorted(
            name
            for name in available - used
            if not any(pattern.fullmatch(name) for pattern in self.ignored)
        )
        if leftover:
            raise source_error(
                f"{architecture} checkpoint has {len(leftover)} tensor(s) the converter does "
                f"not know: {_first(leftover)}",
                hint="this variant is not supported yet; a converter must map or ignore "
                "every tensor",
            )


def _first(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} (and {len(names) - limit} more)"


class Family:
    """Base class of an architecture family. Subclasses fill in the three hooks."""

    name: str = ""
    architectures: tuple[str, ...] = ()
    # Part of the convert stage key: bump when this family's converter output changes.
    version: str = "1"
    # transformers ships no class for it: native_model is the model, and config.json's
    # auto_map (repository classes forge never loads) is accepted (sources/policy.py).
    native: bool = False

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        raise NotImplementedError

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        raise NotImplementedError

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        """Reject configs this family cannot convert; default: dimension sanity only."""
        validate_dims(hf_config)

    def mlp_input_norm(self, hf_config: Mapping[str, Any]) -> str | None:
        """The layer norm (TensorRT-LLM name) whose output is the MLP's input.

        SmoothQuant's plugin layout folds the MLP's smoothing into this norm's
        weight (and bias). ``None`` means the attention's ``input_layernorm``
        feeds the MLP too (parallel blocks), so the two smoothings cannot both
        live in it. Default: a sequential block with ``post_layernorm``.
        """
        return "post_layernorm"

    def quantization_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        """Why forge cannot calibrate this checkpoint (None: it can); refused at plan time."""
        return None

    def trtllm_build_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        """Why TensorRT-LLM's trtllm-build cannot take this family's checkpoint (None: it
        can); `forge export trtllm-ckpt` and build.backend trtllm refuse it at plan time."""
        return None

    def native_model(self, hf_config: Mapping[str, Any]) -> Any:
        """forge's own torch model (weights not loaded) of an architecture transformers
        does not ship, or None.

        Such a family's model (Baichuan 2, ChatGLM 2/3) has the HF module names and is
        filled from the safetensors alone (checkpoint/native.py); verify uses it as the
        reference and calibration as the model, where transformers would need repository
        code.
        """
        return None


def _int_field(hf_config: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = hf_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise source_error(
            f"config.json field {key!r} must be an integer, got {value!r}",
            hint="check the model's config.json",
        )
    return value


def model_dims(hf_config: Mapping[str, Any]) -> dict[str, int]:
    """The sizes recipe checks need (TP/PP divisibility), validated first.

    Returns ``num_attention_heads``, ``num_key_value_heads``, ``num_hidden_layers``,
    ``vocab_size``, ``hidden_size``, ``head_size`` and ``intermediate_size``.
    """
    validate_dims(hf_config)
    return _raw_dims(hf_config)


def _raw_dims(hf_config: Mapping[str, Any]) -> dict[str, int]:
    cfg = text_config(hf_config)
    heads = _int_field(cfg, "num_attention_heads")
    hidden = _int_field(cfg, "hidden_size")
    kv = cfg.get("num_key_value_heads")
    head_dim = cfg.get("head_dim")
    return {
        "num_attention_heads": heads,
        "num_key_value_heads": heads if kv is None else _int_field(cfg, "num_key_value_heads"),
        "num_hidden_layers": _int_field(cfg, "num_hidden_layers"),
        "vocab_size": _int_field(cfg, "vocab_size"),
        "hidden_size": hidden,
        "head_size": (hidden // heads if heads > 0 else 0)
        if head_dim is None
        else _int_field(cfg, "head_dim"),
        "intermediate_size": _int_field(cfg, "intermediate_size", 4 * hidden),
    }


# GPT-2-style config keys (GPT-2, GPT-J, GPTBigCode) -> the names the rest of forge reads.
_KEY_ALIASES = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
    # Falcon and MPT spell them differently again.
    "num_kv_heads": "num_key_value_heads",
    "ffn_hidden_size": "intermediate_size",
    "d_model": "hidden_size",
    "n_heads": "num_attention_heads",
    "n_layers": "num_hidden_layers",
    "max_seq_len": "max_position_embeddings",
}


def text_config(hf_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The decoder config (multimodal wrappers nest it under ``text_config``), with
    GPT-2-style keys (``n_embd``, ``n_head`` ...) also readable under the common names."""
    nested = hf_config.get("text_config")
    cfg = nested if isinstance(nested, Mapping) else hf_config
    aliased = {
        common: cfg[old]
        for old, common in _KEY_ALIASES.items()
        if cfg.get(old) is not None and common not in cfg
    }
    if cfg.get("model_type") == "chatglm":
        aliased.update(_chatglm_aliases(cfg))
    if "multi_query" in cfg and not cfg.get("new_decoder_architecture"):
        # GPTBigCode's modeling code derives KV heads from multi_query alone (the saved
        # num_key_value_heads can be stale), so forge does too. So does Falcon's old
        # decoder; Falcon's new decoder keeps multi_query but uses num_kv_heads.
        heads = cfg.get("n_head", cfg.get("num_attention_heads"))
        kv = 1 if cfg["multi_query"] else heads
        if cfg.get("num_key_value_heads") != kv:
            aliased["num_key_value_heads"] = kv
    return {**cfg, **aliased} if aliased else cfg


# ChatGLM 2/3 config keys -> the common names (docs/models.md, Baichuan 2 and ChatGLM).
_CHATGLM_KEYS = {
    "num_layers": "num_hidden_layers",
    "padded_vocab_size": "vocab_size",
    "kv_channels": "head_dim",
    "seq_length": "max_position_embeddings",
}


def _chatglm_aliases(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """ChatGLM's names; its KV heads are ``multi_query_group_num`` only when
    ``multi_query_attention`` is on (otherwise every head has its own K and V)."""
    aliased = {
        common: cfg[old]
        for old, common in _CHATGLM_KEYS.items()
        if cfg.get(old) is not None and common not in cfg
    }
    if cfg.get("multi_query_attention") and "num_key_value_heads" not in cfg:
        aliased["num_key_value_heads"] = cfg.get("multi_query_group_num", 1)
    return aliased


_LIMITS = {
    "hidden_size": MAX_HIDDEN,
    "num_hidden_layers": MAX_LAYERS,
    "num_attention_heads": MAX_HEADS,
    "num_key_value_heads": MAX_HEADS,
    "vocab_size": MAX_VOCAB,
    "intermediate_size": MAX_INTERMEDIATE,
    "head_size": MAX_HIDDEN,
}


def validate_dims(hf_config: Mapping[str, Any]) -> None:
    """Raise a ForgeError for absurd or inconsistent sizes, before anything is allocated."""
    cfg = text_config(hf_config)
    heads = _int_field(cfg, "num_attention_heads")
    hidden = _int_field(cfg, "hidden_size")
    if heads > 0 and cfg.get("head_dim") is None and hidden % heads:
        raise _bad_config(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
            "and config.json gives no head_dim"
        )
    dims = _raw_dims(cfg)
    for key, limit in _LIMITS.items():
        value = dims[key]
        if value <= 0:
            raise _bad_config(f"{key} must be positive, got {value}")
        if value > limit:
            raise _bad_config(f"{key} = {value} exceeds the supported maximum {limit}")
    if dims["num_attention_heads"] % dims["num_key_value_heads"]:
        raise _bad_config(
            f"num_attention_heads {dims['num_attention_heads']} is not a multiple of "
            f"num_key_value_heads {dims['num_key_value_heads']}"
        )
    positions = cfg.get("max_position_embeddings")
    if positions is not None and not (
        0 < _int_field(cfg, "max_position_embeddings") <= MAX_POSITIONS
    ):
        raise _bad_config(f"max_position_embeddings = {positions} is out of range")


def _bad_config(message: str) -> ForgeError:
    return ForgeError(
        ExitCode.SOURCE,
        f"invalid model config: {message}",
        hint="check the model's config.json (or the recipe's config overrides)",
    )


def architecture(hf_config: Mapping[str, Any]) -> str:
    """The HF class name the checkpoint was saved from (``architectures[0]``), or ""."""
    archs = hf_config.get("architectures") or []
    return str(archs[0]) if archs else ""


def common_config(
    hf_config: Mapping[str, Any],
    *,
    family: str,
    trt_architecture: str,
    dtype: str,
    converter_version: int,
    hidden_act: str,
    norm_epsilon: float,
    position_embedding_type: str,
    tied: bool,
) -> dict[str, Any]:
    """The config.json fields every family writes (docs/trtllm-checkpoint.md §1.2), unsharded
    and unquantized.

    Families add their own fields (rope, biases, variant flags) and ``forge`` extras.
    """
    cfg = text_config(hf_config)
    dims = model_dims(cfg)
    return {
        "architecture": trt_architecture,
        "dtype": check_dtype(dtype),
        "logits_dtype": "float32",
        "vocab_size": dims["vocab_size"],
        "hidden_size": dims["hidden_size"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "head_size": dims["head_size"],
        "hidden_act": hidden_act,
        "intermediate_size": dims["intermediate_size"],
        "norm_epsilon": norm_epsilon,
        "position_embedding_type": position_embedding_type,
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "tie_word_embeddings": tied,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {
            "quant_algo": None,
            "kv_cache_quant_algo": None,
            "group_size": 128,
            "has_zero_point": False,
            "pre_quant_scale": False,
            "exclude_modules": None,
        },
        "forge": {
            "source_architecture": architecture(hf_config),
            "family": family,
            "converter_version": converter_version,
            "head_dim": dims["head_size"],
        },
    }


def check_dtype(dtype: str) -> str:
    if dtype not in ("float32", "float16", "bfloat16"):
        raise recipe_error(
            f"unsupported checkpoint dtype {dtype!r}",
            hint="use one of: float32, float16, bfloat16",
        )
    return dtype
