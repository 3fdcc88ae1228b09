"""Read a quantized Hugging Face folder back — written from the formats' specifications,
sharing no code with the writer (``trtllm_forge.hf.folder``), so a writer bug cannot
hide itself.

:func:`describe` validates the quantization config (``forge inspect``, and the verify
hook before it loads anything); ``trtllm_forge.hf.modelopt_loader`` turns a ModelOpt
unified checkpoint into a float transformers model that computes what a serving stack
would (dequantized weights, pre-quant scale, activation and K/V Q/DQ).
compressed-tensors folders need no reader of forge's: transformers +
compressed-tensors load them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ForgeError, source_error

MODELOPT_ALGOS = (
    "W8A16",
    "W4A16_AWQ",
    "W8A8_SQ_PER_CHANNEL",
    "FP8",
    "FP8_PER_CHANNEL_PER_TOKEN",
    "NVFP4",
    "W4A8_AWQ",
)
MODELOPT_KV = ("FP8", "INT8", "NVFP4")
CT_FORMATS = (
    "pack-quantized",
    "int-quantized",
    "float-quantized",
    "naive-quantized",
    "nvfp4-pack-quantized",
    "dense",
)
CT_STRATEGIES = ("tensor", "channel", "group", "block", "token", "tensor_group", "attn_head")


@dataclass
class FolderInfo:
    """What a folder holds, for ``forge inspect`` and the verify hook."""

    path: str
    format: str  # modelopt | compressed-tensors | none
    quant_algo: str | None = None
    group_size: int | None = None
    excluded_modules: list[str] = field(default_factory=list)
    kv_cache: str | None = None
    compression: str | None = None
    architecture: str | None = None
    serving: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_hf_folder(path: Path) -> bool:
    return (Path(path) / "config.json").is_file() and (
        any(Path(path).glob("*.safetensors")) or (Path(path) / "hf_quant_config.json").is_file()
    )


def describe(folder: Path) -> FolderInfo:
    """Validate and summarize the folder's quantization; a damaged config is exit 5."""
    folder = Path(folder)
    config = _json(folder / "config.json")
    archs = config.get("architectures") or [None]
    serving = None
    if (folder / "forge.json").is_file():
        serving = _json(folder / "forge.json").get("serving")
    qc = config.get("quantization_config")
    if (folder / "hf_quant_config.json").is_file():
        info = _modelopt(folder, _json(folder / "hf_quant_config.json"))
    elif qc is None:
        info = FolderInfo(str(folder), "none")
    elif not isinstance(qc, dict):
        raise _damaged(folder / "config.json", "quantization_config must be an object")
    elif qc.get("quant_method") == "compressed-tensors":
        info = _compressed_tensors(folder, qc)
    elif qc.get("quant_method") == "modelopt":
        info = _modelopt(folder, {"quantization": _flat_modelopt(qc)})
    else:
        raise _damaged(
            folder / "config.json",
            f"quantization_config.quant_method {qc.get('quant_method')!r} is not one forge reads "
            "(modelopt, compressed-tensors)",
        )
    info.architecture = archs[0]
    info.serving = serving
    return info


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise source_error(
            f"{path} does not exist", hint="is this a Hugging Face model folder?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _damaged(path, "must hold a JSON object")
    return doc


def _damaged(path: Path, what: str) -> ForgeError:
    return source_error(
        f"{path}: {what}",
        hint="the folder's quantization config is damaged; rebuild it (forge export hf)",
    )


def _flat_modelopt(qc: dict[str, Any]) -> dict[str, Any]:
    kv = qc.get("kv_cache_scheme")
    kv_algo = kv if isinstance(kv, str) or kv is None else "FP8"
    return {
        "quant_algo": qc.get("quant_algo"),
        "kv_cache_quant_algo": kv_algo,
        "exclude_modules": qc.get("ignore", []),
    }


def _modelopt(folder: Path, doc: dict[str, Any]) -> FolderInfo:
    where = folder / "hf_quant_config.json"
    q = doc.get("quantization")
    if not isinstance(q, dict):
        raise _damaged(where, "`quantization` must be an object")
    algo = q.get("quant_algo")
    if algo is not None and algo not in MODELOPT_ALGOS:
        raise _damaged(where, f"quant_algo {algo!r} is not one of {', '.join(MODELOPT_ALGOS)}")
    kv = q.get("kv_cache_quant_algo")
    if kv is not None and kv not in MODELOPT_KV:
        raise _damaged(where, f"kv_cache_quant_algo {kv!r} is not one of {', '.join(MODELOPT_KV)}")
    group = q.get("group_size")
    if algo == "W4A16_AWQ" and (
        not isinstance(group, int) or isinstance(group, bool) or group <= 0
    ):
        raise _damaged(where, f"W4A16_AWQ needs a positive integer group_size, got {group!r}")
    excluded = _names(where, q.get("exclude_modules", []), "exclude_modules")
    return FolderInfo(
        str(folder),
        "modelopt",
        quant_algo=algo,
        group_size=group if algo == "W4A16_AWQ" else None,
        excluded_modules=excluded,
        kv_cache=kv,
    )


def _names(where: Path, value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _damaged(where, f"{what} must be a list of module names")
    return list(value)


def _compressed_tensors(folder: Path, qc: dict[str, Any]) -> FolderInfo:
    where = folder / "config.json"
    compression = qc.get("format")
    if compression not in CT_FORMATS:
        raise _damaged(
            where,
            f"quantization_config.format {compression!r} is not one of {', '.join(CT_FORMATS)}",
        )
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise _damaged(where, "quantization_config.config_groups must be a non-empty object")
    algo, group_size = None, None
    for name, group in groups.items():
        if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
            raise _damaged(where, f"config_groups.{name}.weights must be an object")
        algo, group_size = _ct_scheme(where, name, group)
    kv = qc.get("kv_cache_scheme")
    if kv is not None and (not isinstance(kv, dict) or kv.get("type") not in ("int", "float")):
        raise _damaged(where, "kv_cache_scheme must be null or an object with type int|float")
    kv_name = None if kv is None else _ct_kv_name(kv)
    return FolderInfo(
        str(folder),
        "compressed-tensors",
        quant_algo=algo,
        group_size=group_size,
        excluded_modules=_names(where, qc.get("ignore", []), "ignore"),
        kv_cache=kv_name,
        compression=compression,
    )


def _ct_kv_name(kv: dict[str, Any]) -> str:
    """The TensorRT-LLM KV-cache algo a ``kv_cache_scheme`` is (4-bit floats: NVFP4)."""
    if kv["type"] == "int":
        return "INT8"
    return "NVFP4" if kv.get("num_bits") == 4 else "FP8"


def _ct_scheme(where: Path, name: str, group: dict[str, Any]) -> tuple[str, int | None]:
    """A readable name for the scheme (W8A16, W4A16, FP8, ...) after checking its fields."""
    weights = group["weights"]
    bits, kind, strategy = weights.get("num_bits"), weights.get("type"), weights.get("strategy")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise _damaged(where, f"config_groups.{name}.weights.num_bits must be 1..8, got {bits!r}")
    if kind not in ("int", "float"):
        raise _damaged(
            where, f"config_groups.{name}.weights.type must be int or float, got {kind!r}"
        )
    if strategy not in CT_STRATEGIES:
        raise _damaged(where, f"config_groups.{name}.weights.strategy {strategy!r} is unknown")
    size = weights.get("group_size")
    if strategy == "group" and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise _damaged(where, f"config_groups.{name}.weights.group_size must be a positive integer")
    acts = group.get("input_activations")
    if kind == "float" and bits == 4:
        return "NVFP4", size
    if kind == "float" and strategy == "block":
        return "FP8_BLOCK_SCALES", (weights.get("block_structure") or [None])[0]
    if kind == "float":
        per_token = isinstance(acts, dict) and acts.get("strategy") == "token"
        return ("FP8_PER_CHANNEL_PER_TOKEN" if per_token else "FP8"), None
    activation = "A8" if isinstance(acts, dict) else "A16"
    return f"W{bits}{activation}", size if strategy == "group" else None
