"""Split an unsharded TensorRT-LLM checkpoint into per-rank files
(docs/trtllm-checkpoint.md §3–§4).

Every output tensor is described first as a :class:`Split` (which source, which
axis, which index ranges, how much zero padding) by pure functions, so
``plan_shards`` can be inspected or tested without touching weights. Only then
are bytes moved, one output tensor at a time, all tp ranks of a pipeline stage
side by side: contiguous ranges are copied by the kernel (``copy_file_range``),
and strided ones (row-parallel weights) are read once in blocks of rows and
handed to every rank's file as ``writev`` ranges. Peak memory is one block, whatever the model
size.

How a tensor is split is decided by two tables, not by code paths:

* the module's parallel kind (layout.py): column modules split their *out*
  axis, row modules their *in* axis, everything else is replicated;
* :data:`PARAM_AXES`: for each parameter kind (``weight``, ``bias``, quantization
  scales …), which physical axis is *out* and which is *in*. A tensor without
  the axis being split is replicated whole (so a row layer's bias, its
  per-channel weight scale and a column layer's ``prequant_scaling_factor`` all
  stay whole, as docs/trtllm-checkpoint.md §2/§3 require).

Packed or grouped axes are handled by ratio: an axis of physical size ``n`` for a
logical size ``N`` advances ``N / n`` logical units per element (2 for int4
pairs, ``group_size`` for group scales), and every shard boundary must fall on
a whole element (for int4 AWQ: in/tp must be a multiple of the group size).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.checkpoint.io import CheckpointReader, rank_file, world_size, write_config
from trtllm_forge.checkpoint.layout import TensorName, module_dims, parse_name
from trtllm_forge.checkpoint.safetensors_stream import (
    BLOCK_BYTES,
    ITEMSIZE,
    ST_TO_TORCH,
    StoredTensor,
    StreamingWriter,
    TensorSink,
    TensorSpec,
    pread_exact,
    read_layout,
)
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import ExitCode, ForgeError, recipe_error
from trtllm_forge.rules import pp_misfit, tp_misfit

_NO_PROGRESS = NullProgress()

# Bumped whenever the rank files produced for the same input change (build stage keys).
SHARD_FORMAT_VERSION = 1

# Parameter kind -> {ndim: axis labels}. "out"/"in" are the module's logical axes;
# "1" is a broadcast axis of size one.
PARAM_AXES: dict[str, dict[int, tuple[str, ...]]] = {
    "weight": {1: ("out",), 2: ("out", "in")},  # AWQ int4 [out/2, in]; NVFP4 [out, in/2]
    "bias": {1: ("out",)},
    # FP8 per-tensor [1] (replicated as a scalar), SQ per-channel [out],
    # AWQ group scales [out, in/group], NVFP4 block scales [out, in/16].
    "weights_scaling_factor": {1: ("out",), 2: ("out", "in")},
    "per_channel_scale": {1: ("out",), 2: ("1", "out")},  # FP8 rowwise [out]; SQ plugin [1, out]
    "prequant_scaling_factor": {1: ("in",), 2: ("1", "in")},  # AWQ / SQ smoothing
    "smoother": {1: ("in",), 2: ("1", "in")},  # SQ plugin, row layers
}
# Parameter kinds that are per-tensor scalars: every rank gets the same value.
REPLICATED_PARAMS = frozenset(
    {
        "activation_scaling_factor",
        "weights_scaling_factor_2",
        "kv_cache_scaling_factor",
        "kv_cache_rcp_scaling_factor",
        "k_cache_scaling_factor",
        "v_cache_scaling_factor",
        "act_scale",
        "scale_to_int",
        "quantization_scaling_factor",
    }
)
# Formats whose stored weights are already in a GPU-specific interleaved layout:
# slicing them would scramble values, so they must be sharded before packing.
_KERNEL_LAYOUT_ALGOS = frozenset({"W4A16_GPTQ", "W8A16_GPTQ"})


@dataclass(frozen=True)
class ParallelPlan:
    tp: int
    pp: int
    layers: int

    def rank(self, tp_rank: int, pp_rank: int) -> int:
        return pp_rank * self.tp + tp_rank

    def layer_range(self, pp_rank: int) -> range:
        """Layers of a PP rank, torch.tensor_split style: the first L % pp ranks get one more."""
        base, extra = divmod(self.layers, self.pp)
        start = pp_rank * base + min(pp_rank, extra)
        return range(start, start + base + (1 if pp_rank < extra else 0))


@dataclass(frozen=True)
class Split:
    """How one rank-local tensor is cut from one source tensor.

    ``ranges`` are [start, end) element ranges along ``axis`` (None: whole
    tensor), concatenated in order, followed by ``pad`` zero elements.
    """

    source: str
    shape: tuple[int, ...]
    axis: int | None = None
    ranges: tuple[tuple[int, int], ...] = ()
    pad: int = 0


def _parallel_error(message: str) -> ForgeError:
    return recipe_error(
        f"invalid parallel layout: {message}",
        hint="choose tp/pp that divide the model's heads, FFN size and layers",
    )


def check_parallel(config: Mapping[str, Any], tp: int, pp: int) -> ParallelPlan:
    """Reject a tp/pp the model cannot be split into; return the plan otherwise."""
    if isinstance(tp, bool) or isinstance(pp, bool) or tp < 1 or pp < 1:
        raise _parallel_error(f"tp and pp must be positive integers, got tp={tp} pp={pp}")
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    layers = int(config["num_hidden_layers"])
    widths = {"intermediate_size": int(config["intermediate_size"])}
    misfit = tp_misfit(tp, heads=heads, kv_heads=kv, widths=widths) or pp_misfit(pp, layers=layers)
    if misfit:  # preflight asks the same rule first; this is for library callers
        raise _parallel_error(misfit.for_checkpoint())
    return ParallelPlan(tp=tp, pp=pp, layers=layers)


def _axis_ratio(name: str, size: int, logical: int) -> int:
    if size <= 0 or logical % size:
        raise ForgeError(
            ExitCode.STORE,
            f"tensor {name}: axis of size {size} does not evenly cover the logical size {logical}",
            hint="the checkpoint's tensors do not match its config.json",
        )
    return logical // size


def _to_physical(
    name: str, ranges: Sequence[tuple[int, int]], ratio: int, why: str
) -> tuple[tuple[int, int], ...]:
    out = []
    for start, end in ranges:
        if start % ratio or end % ratio:
            raise _parallel_error(
                f"tensor {name}: shard boundary {start}..{end} is not a multiple of {ratio} ({why})"
            )
        out.append((start // ratio, end // ratio))
    return tuple(out)


def _qkv_ranges(config: Mapping[str, Any], tp: int, r: int) -> list[tuple[int, int]]:
    """Logical row ranges of tp rank ``r``'s q, k and v head blocks in a fused QKV."""
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    size = int(config["head_size"])
    q_per = heads // tp
    q = (r * q_per * size, (r + 1) * q_per * size)
    if tp >= kv:
        first_kv, kv_per = (r * kv) // tp, 1  # KV head shared by tp // kv ranks
    else:
        first_kv, kv_per = r * (kv // tp), kv // tp
    k_start = heads * size + first_kv * size
    v_start = (heads + kv) * size + first_kv * size
    return [q, (k_start, k_start + kv_per * size), (v_start, v_start + kv_per * size)]


def plan_tensor(
    name: TensorName,
    source: str,
    shape: tuple[int, ...],
    config: Mapping[str, Any],
    tp: int,
    tp_rank: int,
) -> Split:
    """The :class:`Split` of ``source`` (shape ``shape``) for one tp rank."""
    whole = Split(source=source, shape=shape)
    if name.parallel == "none" or name.param in REPLICATED_PARAMS or tp == 1:
        return whole
    axes_by_ndim = PARAM_AXES.get(name.param)
    if axes_by_ndim is None:
        raise ForgeError(
            ExitCode.INTERNAL,
            f"no sharding rule for tensor {source} (parameter kind {name.param!r})",
            hint="add the parameter kind to checkpoint/shard.py PARAM_AXES",
        )
    if name.param == "weights_scaling_factor" and _numel(shape) == 1:
        return whole  # a per-tensor scale
    axes = axes_by_ndim.get(len(shape))
    if axes is None:
        raise ForgeError(
            ExitCode.INTERNAL,
            f"no sharding rule for {len(shape)}-d tensor {source} {list(shape)}",
            hint="add the layout to checkpoint/shard.py PARAM_AXES",
        )
    label = "out" if name.parallel == "column" else "in"
    if label not in axes:
        return whole
    axis = axes.index(label)
    logical = module_dims(name.module, config)[0 if label == "out" else 1]
    ratio = _axis_ratio(source, shape[axis], logical)
    pad = 0
    if name.module == "attention.qkv" and label == "out":
        ranges = _qkv_ranges(config, tp, tp_rank)
        why = "head blocks must not split a packed/grouped element"
    elif name.module == "lm_head":
        # Vocab is padded with zero rows to a multiple of tp (docs/trtllm-checkpoint.md §3.4).
        chunk = -(-logical // tp)
        start = min(tp_rank * chunk, logical)
        end = min((tp_rank + 1) * chunk, logical)
        ranges = [(start, end)] if end > start else []
        pad = chunk - (end - start)
        why = "vocab padding"
    else:
        chunk = logical // tp
        ranges = [(tp_rank * chunk, (tp_rank + 1) * chunk)]
        why = "group/packing size must divide the per-rank size"
    physical = _to_physical(source, ranges, ratio, why)
    if pad % ratio:
        raise _parallel_error(f"tensor {source}: vocab padding {pad} breaks packing {ratio}")
    length = sum(end - start for start, end in physical) + pad // ratio
    new_shape = (*shape[:axis], length, *shape[axis + 1 :])
    return Split(source, new_shape, axis, physical, pad // ratio)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def plan_shards(
    config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, tp: int, pp: int
) -> dict[int, dict[str, Split]]:
    """rank -> {rank-local tensor name -> Split}, for every rank, without reading weights."""
    plan = check_parallel(config, tp, pp)
    algo = (config.get("quantization") or {}).get("quant_algo")
    if algo in _KERNEL_LAYOUT_ALGOS and tp > 1:
        raise recipe_error(
            f"cannot shard a {algo} checkpoint whose weights are already in kernel layout",
            hint="quantize after choosing tp, or use an AWQ/weight-only method",
        )
    parsed: dict[str, TensorName] = {}
    for source in shapes:
        name = parse_name(source)
        if name is None:
            raise ForgeError(
                ExitCode.INTERNAL,
                f"the sharder does not know where tensor {source} belongs",
                hint="add its module to checkpoint/layout.py",
            )
        parsed[source] = name
    ranks: dict[int, dict[str, Split]] = {}
    for pp_rank in range(pp):
        layers = plan.layer_range(pp_rank)
        for tp_rank in range(tp):
            local: dict[str, Split] = {}
            for source, name in parsed.items():
                target = _local_name(name, layers, pp_rank, pp)
                if target is not None:
                    local[target] = plan_tensor(
                        name, source, tuple(shapes[source]), config, tp, tp_rank
                    )
            ranks[plan.rank(tp_rank, pp_rank)] = local
    return ranks


def _local_name(name: TensorName, layers: range, pp_rank: int, pp: int) -> str | None:
    """The tensor's name in this PP rank's file, or None if the rank does not hold it."""
    if name.layer is not None:
        return name.render(name.layer - layers.start) if name.layer in layers else None
    where = name.placement
    if (where == "first" and pp_rank == 0) or (where == "last" and pp_rank == pp - 1):
        return name.render()
    return None


def read_split(reader: CheckpointReader, split: Split) -> torch.Tensor:
    """Materialise one :class:`Split`, reading only the needed slices."""
    if split.axis is None:
        return reader.get(split.source)
    sl = reader.get_slice(split.source)
    lead = (slice(None),) * split.axis
    parts = [sl[(*lead, slice(start, end))] for start, end in split.ranges]
    if split.pad:
        shape = list(split.shape)
        shape[split.axis] = split.pad
        parts.append(torch.zeros(shape, dtype=ST_TO_TORCH[sl.get_dtype()]))
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=split.axis)


def shard_checkpoint(
    src_dir: Path,
    out_dir: Path,
    *,
    tp: int,
    pp: int,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Write ``rank{r}.safetensors`` (r = pp_rank * tp + tp_rank) and config.json to ``out_dir``.

    The source must be unsharded (tp = pp = 1). Returns
    ``{"world_size", "tp", "pp", "tensors", "bytes", "files"}``.
    """
    out_dir = Path(out_dir)
    with CheckpointReader(Path(src_dir)) as reader:
        config = dict(reader.config)
        if world_size(config) != 1:
            raise recipe_error(
                f"{src_dir} is already sharded (world size {world_size(config)})",
                hint="shard from the unsharded (tp=pp=1) checkpoint",
            )
        shapes = {name: reader.shape(name) for name in reader.names()}
        ranks = plan_shards(config, shapes, tp=tp, pp=pp)
        out_dir.mkdir(parents=True, exist_ok=True)
        dtypes = {name: reader.get_slice(name).get_dtype() for name in shapes}
        total_tensors = sum(len(local) for local in ranks.values())
        total_bytes = 0
        source = Path(src_dir) / rank_file(0)
        layout = read_layout(source)
        with (
            progress.task(f"sharding tp={tp} pp={pp}", total=total_tensors) as task,
            open(source, "rb", buffering=0) as src,
        ):
            for group in _tp_groups(ranks, tp):
                total_bytes += _write_group(src.fileno(), layout, out_dir, group, dtypes, task)
    config["mapping"] = {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}
    write_config(out_dir, config)
    extra = Path(src_dir) / "quant_cfg.json"
    if extra.is_file():
        shutil.copyfile(extra, out_dir / extra.name)
    files = ["config.json", *(rank_file(r) for r in sorted(ranks))]
    progress.log(f"sharded into {len(ranks)} rank files (tp={tp}, pp={pp})")
    return {
        "world_size": tp * pp,
        "tp": tp,
        "pp": pp,
        "tensors": total_tensors,
        "bytes": total_bytes,
        "files": files,
    }


def _tp_groups(
    ranks: Mapping[int, Mapping[str, Split]], tp: int
) -> list[dict[int, Mapping[str, Split]]]:
    """Ranks of one pipeline stage (they hold the same tensor names, in the same order)."""
    groups: dict[int, dict[int, Mapping[str, Split]]] = {}
    for rank, local in ranks.items():
        groups.setdefault(rank // tp, {})[rank] = local
    return list(groups.values())


def _write_group(
    src_fd: int,
    layout: Mapping[str, StoredTensor],
    out_dir: Path,
    group: Mapping[int, Mapping[str, Split]],
    dtypes: Mapping[str, str],
    task: Any,
) -> int:
    """Write the rank files of one pipeline stage side by side, tensor by tensor, so a
    source tensor that several tp ranks slice (row-parallel weights) is read once."""
    specs = {
        rank: [
            TensorSpec(target, ST_TO_TORCH[dtypes[split.source]], split.shape)
            for target, split in local.items()
        ]
        for rank, local in group.items()
    }
    with ExitStack() as files:
        writers = {
            rank: files.enter_context(StreamingWriter(out_dir / rank_file(rank), specs[rank]))
            for rank in group
        }
        order = next(iter(writers.values())).order
        if any(w.order != order for w in writers.values()):  # plan_shards guarantees they agree
            raise ForgeError(
                ExitCode.INTERNAL, "tp ranks of one pipeline stage hold different tensors"
            )
        for target in order:
            with ExitStack() as tensors:
                sinks = [
                    (group[rank][target], tensors.enter_context(writers[rank].tensor(target)))
                    for rank in group
                ]
                _fill(src_fd, layout, sinks)
            task.advance(len(group))
    return sum(spec.nbytes for rank_specs in specs.values() for spec in rank_specs)


def _fill(
    src_fd: int, layout: Mapping[str, StoredTensor], sinks: Sequence[tuple[Split, TensorSink]]
) -> None:
    """Write each :class:`Split` into its sink, byte for byte what :func:`read_split` returns.

    Viewing the source as ``[outer, axis, inner]``, a split keeps index ranges of
    the middle axis then appends zero padding. With ``outer == 1`` (splits along
    the first axis) every range is one contiguous run of bytes, copied by the
    kernel; otherwise rows of the source are read in blocks and sliced, once for all the
    ranks that share the source.
    """
    strided: dict[tuple[str, int], list[tuple[Split, TensorSink]]] = {}
    for split, sink in sinks:
        stored = layout[split.source]
        if split.axis is None:
            sink.copy(src_fd, stored.offset, stored.nbytes)
            continue
        outer, _, unit = _geometry(stored, split.axis)
        if outer != 1:
            strided.setdefault((split.source, split.axis), []).append((split, sink))
            continue
        for start, end in split.ranges:
            sink.copy(src_fd, stored.offset + start * unit, (end - start) * unit)
        sink.zeros(split.pad * unit)
    for (source, axis), pairs in strided.items():
        _fill_strided(src_fd, layout[source], axis, pairs)


def _geometry(stored: StoredTensor, axis: int) -> tuple[int, int, int]:
    """``(outer, size of axis, bytes per index of axis)`` of a row-major tensor."""
    outer = _numel(stored.shape[:axis])
    inner = _numel(stored.shape[axis + 1 :])
    return outer, stored.shape[axis], inner * ITEMSIZE[stored.dtype]


def _fill_strided(
    src_fd: int, stored: StoredTensor, axis: int, pairs: Sequence[tuple[Split, TensorSink]]
) -> None:
    """Read whole rows of the ``[outer, axis, inner]`` view a block at a time; hand each
    rank its ranges of every row (and its padding) as one ``writev``, without copying."""
    outer, size, unit = _geometry(stored, axis)
    row = size * unit
    padding = memoryview(bytes(max(split.pad for split, _ in pairs) * unit))
    step = max(1, BLOCK_BYTES // row if row else outer)
    buffer = memoryview(bytearray(min(step, outer) * row))
    for first in range(0, outer, step):
        n = min(step, outer - first)
        block = buffer[: n * row]
        pread_exact(src_fd, block, stored.offset + first * row)
        for split, sink in pairs:
            views: list[memoryview] = []
            for r in range(n):
                base = r * row
                views.extend(
                    block[base + start * unit : base + end * unit] for start, end in split.ranges
                )
                if split.pad:
                    views.append(padding[: split.pad * unit])
            sink.write_views(views)
