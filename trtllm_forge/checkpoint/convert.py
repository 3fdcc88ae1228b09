"""HF safetensors snapshot -> unsharded TensorRT-LLM checkpoint, one tensor at a time.

Source tensors are read through ``safe_open`` (mmap) only when the output
tensor that needs them is written, cast, fused and dropped, so memory stays at
the size of the biggest fused tensor (a layer's QKV) whatever the model size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from trtllm_forge.checkpoint.io import rank_file, write_config
from trtllm_forge.checkpoint.layout import unquantized_shape
from trtllm_forge.checkpoint.safetensors_stream import StreamingWriter, TensorSpec
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import source_error
from trtllm_forge.models.base import TensorRule, check_dtype
from trtllm_forge.models.registry import family_for

INDEX_NAME = "model.safetensors.index.json"
_NO_PROGRESS = NullProgress()
_FLOAT_SOURCE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_hf_config(src_dir: Path) -> dict[str, Any]:
    path = Path(src_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise source_error(f"{path} does not exist", hint="is this a HF model directory?") from exc
    except json.JSONDecodeError as exc:
        raise source_error(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise source_error(f"{path} must hold a JSON object")
    return config


def hf_weight_files(src_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded or single file)."""
    src_dir = Path(src_dir)
    index_path = src_dir / INDEX_NAME
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text()).get("weight_map") or {}
        files = {name: src_dir / fname for name, fname in weight_map.items()}
        absent = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if absent:
            raise source_error(
                f"{INDEX_NAME} lists shard(s) that are missing: {', '.join(absent)}",
                hint="the snapshot is incomplete; fetch it again",
            )
        return files
    shards = sorted(src_dir.glob("*.safetensors"))
    if not shards:
        has_bin = any(src_dir.glob("*.bin")) or any(src_dir.glob("*.pt"))
        raise source_error(
            f"no .safetensors weights in {src_dir}",
            hint="convert the checkpoint to safetensors first"
            if has_bin
            else "point the recipe at a Hugging Face model directory",
        )
    files = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                files[name] = shard
    return files


class _SourceTensors:
    """Lazy, cached file handles over the HF shards."""

    def __init__(self, files: Mapping[str, Path], stack: ExitStack) -> None:
        self._files = files
        self._stack = stack
        self._handles: dict[Path, Any] = {}

    def _handle(self, name: str) -> Any:
        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path]

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str]:
        sl = self._handle(name).get_slice(name)
        return tuple(sl.get_shape()), str(sl.get_dtype())

    def load(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = self._handle(name).get_tensor(name)
        return tensor


def _fused_shape(rule: TensorRule, sources: _SourceTensors) -> tuple[int, ...]:
    shapes = []
    for name in rule.sources:
        shape, dtype = sources.shape_dtype(name)
        if dtype not in _FLOAT_SOURCE:
            raise source_error(
                f"source tensor {name} has dtype {dtype}; only float32/float16/bfloat16 "
                "weights can be converted",
                hint="pre-quantized HF checkpoints are not supported; start from the "
                "unquantized model",
            )
        shapes.append(shape)
    if rule.fusion == "identity":
        return shapes[0]
    tails = {shape[1:] for shape in shapes}
    if len(tails) != 1:
        raise source_error(
            f"cannot fuse {', '.join(rule.sources)} into {rule.target}: shapes {shapes} differ"
        )
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def _check_shape(target: str, shape: tuple[int, ...], config: Mapping[str, Any]) -> None:
    expected = unquantized_shape(target, config)
    if expected is not None and expected != shape:
        raise source_error(
            f"tensor {target} would have shape {list(shape)} but config.json implies "
            f"{list(expected)}",
            hint="the weights do not match config.json (wrong config or truncated shard?)",
        )


def _build(rule: TensorRule, sources: _SourceTensors, dtype: torch.dtype) -> torch.Tensor:
    parts = [sources.load(name).to(dtype) for name in rule.sources]
    if rule.fusion == "identity":
        return parts[0].contiguous()
    return torch.cat(parts, dim=0)


def convert_hf_checkpoint(
    src_dir: Path,
    out_dir: Path,
    *,
    dtype: str,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Convert an HF model dir into an unsharded TensorRT-LLM checkpoint in ``out_dir``.

    Writes ``config.json`` and ``rank0.safetensors``. Raises ForgeError for an
    unknown architecture, an absurd config, or tensors the family table does not
    account for (each named).

    Returns:
        ``{"tensors": n, "bytes": b, "source_architecture": ..., "family": ..., "dtype": ...}``
    """
    target_dtype: torch.dtype = getattr(torch, check_dtype(dtype))
    hf_config = load_hf_config(Path(src_dir))
    family = family_for(hf_config)
    trt_config = family.trtllm_config(hf_config, dtype=dtype)
    plan = family.tensor_plan(hf_config)
    files = hf_weight_files(Path(src_dir))
    architecture = trt_config["forge"]["source_architecture"]
    plan.check_total(files, architecture=architecture)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        sources = _SourceTensors(files, stack)
        rules = {rule.target: rule for rule in plan.rules}
        specs = []
        for rule in plan.rules:
            shape = _fused_shape(rule, sources)
            _check_shape(rule.target, shape, trt_config)
            specs.append(TensorSpec(rule.target, target_dtype, shape))
        total = sum(spec.nbytes for spec in specs)
        with (
            progress.task("converting tensors", total=len(specs)) as task,
            StreamingWriter(out_dir / rank_file(0), specs) as writer,
        ):
            for name in writer.order:
                writer.write(name, _build(rules[name], sources, target_dtype))
                task.advance()
    write_config(out_dir, trt_config)
    progress.log(f"converted {len(specs)} tensors ({total / 2**20:.1f} MiB) of {architecture}")
    return {
        "tensors": len(specs),
        "bytes": total,
        "source_architecture": architecture,
        "family": family.name,
        "dtype": dtype,
        "files": ["config.json", rank_file(0)],
    }


__all__ = ["convert_hf_checkpoint", "hf_weight_files", "load_hf_config"]
