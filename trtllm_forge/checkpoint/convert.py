"""HF safetensors snapshot -> unsharded TensorRT-LLM checkpoint, one tensor at a time.

Source headers are validated with ``safe_open``; the bytes are then streamed
straight into the output file. A tensor already in the target dtype is copied
by the kernel (``copy_file_range``, as ``cp`` does) and a fusion is the
concatenation of its sources' bytes (q, k and v stacked along rows), so no
tensor object is built. Tensors that need a cast pass through in row blocks of
a few MB. Memory is flat whatever the model size, and no source file is
memory-mapped, so reading it does not add its pages to our RSS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from trtllm_forge.checkpoint.io import rank_file, write_config
from trtllm_forge.checkpoint.layout import unquantized_shape
from trtllm_forge.checkpoint.safetensors_stream import (
    CAST_BLOCK_BYTES,
    ST_TO_TORCH,
    StoredTensor,
    StreamingWriter,
    TensorSink,
    TensorSpec,
    pread_exact,
    read_layout,
    tensor_bytes,
)
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import source_error
from trtllm_forge.models.base import TensorRule, check_dtype
from trtllm_forge.models.registry import family_for
from trtllm_forge.sources.policy import read_config

INDEX_NAME = "model.safetensors.index.json"
_NO_PROGRESS = NullProgress()
_FLOAT_SOURCE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_hf_config(src_dir: Path) -> dict[str, Any]:
    """The source model's config.json, read by the one reader of it (sources.policy)."""
    return read_config(Path(src_dir))


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
    """Lazy, cached file handles over the HF shards: ``safe_open`` for validated
    shapes and dtypes, a plain descriptor and the header's offsets for the bytes."""

    def __init__(self, files: Mapping[str, Path], stack: ExitStack) -> None:
        self._files = files
        self._stack = stack
        self._handles: dict[Path, Any] = {}
        self._raw: dict[Path, tuple[int, dict[str, StoredTensor]]] = {}

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

    def raw(self, name: str) -> tuple[int, StoredTensor]:
        """An open descriptor of the file holding ``name`` and where its bytes are."""
        path = self._files[name]
        if path not in self._raw:
            self._handle(name)  # safe_open validates the header first
            fh = self._stack.enter_context(open(path, "rb", buffering=0))
            self._raw[path] = (fh.fileno(), read_layout(path))
        fd, layout = self._raw[path]
        return fd, layout[name]


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
    if rule.fusion == "transpose":
        return tuple(reversed(shapes[0]))
    if rule.fusion == "row_block":
        return (shapes[0][0] // rule.blocks, *shapes[0][1:])
    if rule.fusion != "concat_rows":
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


def _write_tensor(
    sink: TensorSink, rule: TensorRule, sources: _SourceTensors, dtype: torch.dtype
) -> None:
    """Stream one output tensor: its sources' bytes one after the other.

    Fusions concatenate along dim 0 of row-major tensors whose other dims agree
    (checked by ``_fused_shape``), which is exactly byte concatenation. Rules that
    transpose, reorder or add go through torch (:func:`transformed_tensor`).
    """
    if not rule.streams_bytes:
        source = sources.load(rule.sources[0])
        sink.write(tensor_bytes(transformed_tensor(rule, source, dtype)))
        return
    for name in rule.sources:
        fd, stored = sources.raw(name)
        if ST_TO_TORCH[stored.dtype] == dtype:
            sink.copy(fd, stored.offset, stored.nbytes)
        else:
            _write_cast(sink, fd, stored, dtype)


def transformed_tensor(rule: TensorRule, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The output of a one-source rule that is not a byte copy (computed in float32)."""
    x = source.to(torch.float32)
    if rule.fusion == "transpose":
        x = x.t()
    elif rule.fusion == "add_one":
        x = x + 1.0
    elif rule.fusion == "normalize_rows":
        x = torch.nn.functional.normalize(x, dim=-1)
    order = rule.row_order(x.shape[0])
    if order is not None:
        x = x[torch.tensor(order)]
    return x.to(dtype).contiguous()


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Casts run per block of a few MB; with torch's default thread pool, waking and
    spinning its threads for each small cast cost more CPU than the cast itself
    (measured: 4x the user time on the 1B bench shape). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_cast(sink: TensorSink, fd: int, stored: StoredTensor, dtype: torch.dtype) -> None:
    """Cast in blocks of whole rows (a cast is elementwise, so blocks give the same bytes)."""
    rows = stored.shape[0] if stored.shape else 1
    if rows == 0 or stored.nbytes == 0:
        return
    row_bytes = stored.nbytes // rows
    step = max(1, CAST_BLOCK_BYTES // row_bytes) * row_bytes
    source_dtype = ST_TO_TORCH[stored.dtype]
    # Both buffers are reused for every block: fresh multi-MB allocations cost a
    # page fault per 4 KiB each time.
    raw = torch.empty(min(step, stored.nbytes), dtype=torch.uint8)
    cast = torch.empty(raw.numel() // raw[:0].view(source_dtype).element_size(), dtype=dtype)
    for start in range(0, stored.nbytes, step):
        n = min(step, stored.nbytes - start)
        array: Any = raw.numpy()
        pread_exact(fd, memoryview(array)[:n], stored.offset + start)
        source = raw[:n].view(source_dtype)
        out = cast[: source.numel()]
        out.copy_(source)
        sink.write(tensor_bytes(out))


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
        stack.enter_context(_one_torch_thread())
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
                with writer.tensor(name) as sink:
                    _write_tensor(sink, rules[name], sources, target_dtype)
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
