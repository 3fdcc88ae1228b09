"""Lower a per-rank TensorRT-LLM checkpoint to per-rank ONNX graphs.

Output layout (relative to ``out_dir``)::

    rank{r}/model.onnx         full rank graph, collectives as custom-domain nodes
    rank{r}/model.onnx.data    the rank's weights (external data, checkpoint dtype)
    rank{r}/segment_NNN.onnx   the graph split at its collectives (ONNX Runtime)
    rank{r}/rank{r}.safetensors  with ``share``: a link to the checkpoint's rank file,
                               whose tensors the graphs reference in place (shared.py)

The returned dict is the ``onnx`` section of the engine metadata (engine.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.onnx import OPSET
from trtllm_forge.engine.onnx.context import LoweringContext, RankWeights
from trtllm_forge.engine.onnx.decoder import build_decoder
from trtllm_forge.engine.onnx.graph import ExternalData, GraphBuilder
from trtllm_forge.engine.onnx.names import COLLECTIVE_DOMAIN
from trtllm_forge.engine.onnx.segments import split_at_collectives
from trtllm_forge.engine.onnx.shared import SharedWeights, check_graph
from trtllm_forge.engine.spec import Checkpoint, RankLayout, read_checkpoint
from trtllm_forge.errors import source_error

_NO_PROGRESS = NullProgress()

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PROFILES = ("portable", "ort")


@dataclass(frozen=True)
class OrtProfile:
    """The ort profile's build choices: rope table rows (the engine's max_seq_len) and
    MatMulNBits' accuracy_level (0: float activations; 4: int8 activations on CPU)."""

    max_positions: int
    accuracy_level: int = 0
    compute_dtype: str = "float32"  # or "float16" (CUDA's GroupQueryAttention)


def lower_checkpoint(
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    segments: bool = True,
    full_check: bool = True,
    progress: Progress = _NO_PROGRESS,
    ort: OrtProfile | None = None,
    share: bool = False,
) -> dict[str, Any]:
    """Write every rank's ONNX graph (and its ORT segments) and return their description.

    Args:
        checkpoint_dir: per-rank TensorRT-LLM checkpoint (config.json + rank{r}.safetensors).
        out_dir: directory to write ``rank{r}/`` into (created).
        segments: also write the graph split at collectives, for the ORT runtime.
        full_check: run ``onnx.checker.check_model(path, full_check=True)`` on each rank graph.
        ort: build the ``ort`` profile (ONNX Runtime contrib ops, single rank) instead of
            the portable graph; the checker skips contrib ops, which it has no schema for.
        share: (portable profile) reference the tensors the graph uses unchanged in the
            checkpoint's rank files instead of copying them, where those files are
            read-only (the store's are, trtllm_forge/store/blobs.py): a link to a file
            someone may still write in place would change the engine with it.
    """
    ckpt = read_checkpoint(checkpoint_dir)
    if ort is not None:
        return _lower_ort(ckpt, Path(out_dir), ort, progress=progress)
    out_dir = Path(out_dir)
    ranks = []
    with (
        CheckpointReader(ckpt.path) as reader,
        progress.task("lowering to ONNX", total=len(ckpt.ranks)) as task,
    ):
        for layout in ckpt.ranks:
            weights = RankWeights(reader, layout.rank)
            ranks.append(
                _lower_rank(
                    ckpt,
                    layout,
                    weights,
                    out_dir,
                    segments=segments,
                    full_check=full_check,
                    share=share,
                )
            )
            task.advance()
    return {
        "opset": OPSET,
        "collective_domain": COLLECTIVE_DOMAIN,
        "compute_dtype": "float32",
        "weights_dtype": ckpt.model.dtype,
        "ranks": ranks,
    }


def _require_all_used(weights: RankWeights) -> None:
    """A tensor the lowering never read means a layer kind or quantization it ignores."""
    unused = weights.unused()
    if unused:
        raise source_error(
            f"{weights.file} has {len(unused)} tensor(s) the lowering did not use: "
            f"{', '.join(unused[:4])}",
            hint="the checkpoint holds a layer kind or quantization this lowering does not implement",
        )


def _lower_rank(
    ckpt: Checkpoint,
    layout: RankLayout,
    weights: RankWeights,
    out_dir: Path,
    *,
    segments: bool,
    full_check: bool,
    build: Callable[[LoweringContext], None] = build_decoder,
    custom_domains: list[str] | None = None,
    share: bool = False,
) -> dict[str, Any]:
    rank_dir = out_dir / f"rank{layout.rank}"
    rank_dir.mkdir(parents=True, exist_ok=True)
    data = ExternalData(rank_dir / DATA_FILE)
    shared = _shared_weights(ckpt.path / weights.file, rank_dir) if share else None
    try:
        ctx = LoweringContext(GraphBuilder(data), weights, ckpt.model, layout, shared=shared)
        build(ctx)
        if shared is not None:
            shared.settle(data)
    finally:
        data.close()
    _require_all_used(weights)
    if custom_domains is None:
        custom_domains = [COLLECTIVE_DOMAIN] if layout.tp_size > 1 else []
    last = layout.first_layer + layout.num_layers - 1
    model = ctx.graph.model(
        f"rank{layout.rank}",
        custom_domains=custom_domains,
        doc=f"trtllm-forge decoder, rank {layout.rank} (tp {layout.tp_rank}/{layout.tp_size}, "
        f"pp {layout.pp_rank}/{layout.pp_size}), layers {layout.first_layer}..{last}",
    )
    onnx.helper.set_model_props(model, _model_props(ckpt, layout))
    model_path = rank_dir / MODEL_FILE
    onnx.save_model(model, model_path)
    if full_check:
        check_graph(model_path)
    schedule = split_at_collectives(model, rank_dir) if segments else []
    return {
        "rank": layout.rank,
        "tp_rank": layout.tp_rank,
        "pp_rank": layout.pp_rank,
        "first_layer": layout.first_layer,
        "num_layers": layout.num_layers,
        "dir": rank_dir.name,
        "model": f"{rank_dir.name}/{MODEL_FILE}",
        "data": f"{rank_dir.name}/{DATA_FILE}",
        "data_bytes": data.size,
        "shared": shared.describe() if shared is not None else None,
        "inputs": [_describe(v) for v in model.graph.input],
        "outputs": [_describe(v) for v in model.graph.output],
        "schedule": [step.to_json() for step in schedule],
    }


def _shared_weights(source: Path, rank_dir: Path) -> SharedWeights | None:
    """References into ``source`` when it is read-only (see ``share``), else None."""
    # The mode bits, not os.access: root may write any file, read-only or not.
    if source.stat().st_mode & 0o222:
        return None
    return SharedWeights(source, rank_dir)


def _model_props(ckpt: Checkpoint, layout: RankLayout) -> dict[str, str]:
    return {
        "forge.architecture": ckpt.model.architecture,
        "forge.rank": str(layout.rank),
        "forge.tp_size": str(layout.tp_size),
        "forge.pp_size": str(layout.pp_size),
        "forge.first_layer": str(layout.first_layer),
        "forge.num_layers": str(layout.num_layers),
    }


def _describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
    }


def _lower_ort(
    ckpt: Checkpoint, out_dir: Path, ort: OrtProfile, *, progress: Progress
) -> dict[str, Any]:
    from trtllm_forge.engine.onnx.ort.decoder import build_ort_decoder
    from trtllm_forge.engine.onnx.ort.matmul import MS_DOMAIN, OrtLinears

    if len(ckpt.ranks) != 1:
        raise source_error(
            f"build.profile ort lowers single-rank checkpoints; this one has {len(ckpt.ranks)} ranks",
            hint="set parallel.tp and parallel.pp to 1, or use build.profile: portable",
        )

    def build(ctx: LoweringContext) -> None:
        if ort.compute_dtype == "float16":
            ctx.compute_type = onnx.TensorProto.FLOAT16
        build_ort_decoder(ctx, ort.max_positions, OrtLinears(ort.accuracy_level))

    with (
        CheckpointReader(ckpt.path) as reader,
        progress.task("lowering to ONNX (ort profile)", total=1) as task,
    ):
        layout = ckpt.ranks[0]
        rank = _lower_rank(
            ckpt,
            layout,
            RankWeights(reader, layout.rank),
            out_dir,
            segments=True,
            full_check=False,
            build=build,
            custom_domains=[MS_DOMAIN],
        )
        task.advance()
    return {
        "opset": OPSET,
        "profile": "ort",
        "contrib_domain": MS_DOMAIN,
        "compute_dtype": ort.compute_dtype,
        "weights_dtype": ckpt.model.dtype,
        "max_positions": ort.max_positions,
        "accuracy_level": ort.accuracy_level,
        "ranks": [rank],
    }
