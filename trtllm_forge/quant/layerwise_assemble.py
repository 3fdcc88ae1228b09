"""Layer-wise calibration's files: each layer's checkpoint tensors and calibration
records as it finishes, then the checkpoint assembled from them tensor by tensor.

A layer's tensors are made by the whole-model writer's own functions (quant/writer.py)
on the plan restricted to that layer, so the assembled ``rank0.safetensors`` holds the
tensors :func:`writer.write_checkpoint` would write; ``linears.safetensors`` merges the
per-layer records quant/linear_records.py writes. Nothing larger than one tensor (one
layer while it is written) is in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from trtllm_forge.checkpoint.io import CheckpointReader, rank_file, read_config, write_config
from trtllm_forge.checkpoint.safetensors_stream import (
    ST_TO_TORCH,
    StoredTensor,
    StreamingWriter,
    TensorSpec,
    read_layout,
)
from trtllm_forge.context import Progress
from trtllm_forge.quant import formats, writer
from trtllm_forge.quant.device import Placement
from trtllm_forge.quant.layerwise_store import LayerStore
from trtllm_forge.quant.linear_records import RECORDS_FILE, OriginalWeights, record_tensors
from trtllm_forge.quant.result import QuantResult
from trtllm_forge.quant.targets import TargetPlan
from trtllm_forge.quant.writer import QuantSpec


class LayerWriter:
    """Writes one finished layer's files into the work folder (readers held open)."""

    def __init__(
        self,
        canonical_dir: Path,
        hf_dir: Path,
        plan: TargetPlan,
        calib_dtype: str,
        stack: ExitStack,
    ) -> None:
        self.reader = stack.enter_context(CheckpointReader(canonical_dir))
        self.dtype = ST_TO_TORCH[writer._dtype_name(self.reader.config)]
        self.transposed = {
            source: target.rule is not None and target.rule.fusion == "transpose"
            for target in plan.quantized
            for source in target.sources
        }
        self.hf_dir = hf_dir
        self.calib_dtype = calib_dtype

    def pack(
        self,
        spec: QuantSpec,
        plan: TargetPlan,
        result: QuantResult,
        placement: Placement,
        loaded: Mapping[str, torch.Tensor],
    ) -> PackedLayer:
        """A finished layer's checkpoint tensors and calibration records, on the host.

        ``result`` is where the method left it. A format that packs on the device
        (formats.packs_on_device) is fused, packed and checked against ``loaded`` (the
        layer's weights as loaded, before calibration) there, and only packed weights
        and ranges come to the host; any other comes to the host in float32 first, as
        the whole-model path brings it."""
        if on_device(placement, spec):
            result = placement.to_float32(result)
        else:
            result, loaded = placement.to_cpu(result), {}
        fused = writer._fused_linears(spec, plan, result) if spec.quant_algo else {}
        built = writer.quantized_tensors(spec, fused, self.dtype)
        new = {name: tensor.to("cpu") for name, tensor in built.items()}
        # A format folding smoothing into norms never packs on the device: host records.
        new.update(writer.folded_norms(spec, plan, fused, self.reader, self.dtype))
        new.update(writer.kv_tensors(spec, result))
        del fused, built
        # Opened per layer: a mapping held open keeps every page it touched in the RSS.
        with ExitStack() as stack:
            originals = OriginalWeights(self.hf_dir, self.transposed, stack, loaded)
            records, counts = record_tensors(result, originals, self.calib_dtype)
        return PackedLayer(new, records, counts)

    def save(self, store: LayerStore, index: int, packed: PackedLayer) -> list[Path]:
        """``layer-k.safetensors`` and ``records-k.safetensors`` (not yet committed)."""
        tensors_file = store.path("layer", index, "safetensors")
        save_file(packed.tensors, str(tensors_file))
        records_file = store.path("records", index, "safetensors")
        save_file(packed.records, str(records_file), {"calibration_dtype": self.calib_dtype})
        return [tensors_file, records_file]


@dataclass(frozen=True)
class PackedLayer:
    """One layer's files' tensors on the host, and its records' counts."""

    tensors: dict[str, torch.Tensor]
    records: dict[str, torch.Tensor]
    counts: dict[str, int]


def on_device(placement: Placement, spec: QuantSpec) -> bool:
    """Whether a layer's result is packed where it was calibrated (see LayerWriter.write)."""
    return placement.device != "cpu" and formats.packs_on_device(spec.quant_algo)


def assemble(
    store: LayerStore,
    layers: int,
    canonical_dir: Path,
    out_dir: Path,
    spec: QuantSpec,
    plan: TargetPlan,
    forge_info: dict[str, Any],
    placement: Placement,
    progress: Progress,
) -> dict[str, Any]:
    """``config.json``, ``rank0.safetensors`` and ``linears.safetensors`` from the
    committed layers; the summary quantize_checkpoint returns. Bytes are copied file to
    file by the kernel, never mapped: nothing of the model enters the process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        new = _sources(stack, [store.path("layer", i, "safetensors") for i in range(layers)])
        canonical = _sources(stack, [Path(canonical_dir) / rank_file(0)])
        dropped = writer._replaced_weights(plan, spec)
        chosen = {n: src for n, src in canonical.items() if n not in dropped and n not in new}
        chosen.update(new)
        with progress.task("writing quantized checkpoint", total=len(chosen)):
            _copy_all(out_dir / rank_file(0), chosen, None)
        records = [store.path("records", i, "safetensors") for i in range(layers)]
        _copy_all(out_dir / RECORDS_FILE, _sources(stack, records), placement.dtype)
    config = dict(read_config(Path(canonical_dir)))
    config["quantization"] = writer.quantization_block(spec, plan)
    config["forge"] = {**(config.get("forge") or {}), "quantization": dict(forge_info)}
    write_config(out_dir, config)
    commits = [store.record(i) or {} for i in range(layers)]  # hashed when committed
    return {
        "tensors": len(chosen),
        "quantized_modules": [t.module for t in plan.quantized] if spec.quant_algo else [],
        "excluded_modules": [t.module for t in plan.excluded],
        "quantization": config["quantization"],
        "files": ["config.json", rank_file(0)],
        "records": {
            field: sum(int(c.get("records", {}).get(field, 0)) for c in commits)
            for field in ("linears", "stored_weights", "float_weights")
        },
        "kv_amax": {str(i): c["kv"] for i, c in enumerate(commits) if c.get("kv") is not None},
    }


def _sources(stack: ExitStack, files: list[Path]) -> dict[str, tuple[int, StoredTensor]]:
    """Tensor name → (an open descriptor of its file, where its bytes are)."""
    found: dict[str, tuple[int, StoredTensor]] = {}
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        stack.callback(os.close, fd)
        found.update({name: (fd, stored) for name, stored in read_layout(file).items()})
    return found


def _copy_all(
    path: Path, sources: dict[str, tuple[int, StoredTensor]], calib_dtype: str | None
) -> None:
    """One safetensors file of ``sources``' tensors (the records carry their dtype)."""
    specs = [
        TensorSpec(name, ST_TO_TORCH[stored.dtype], stored.shape)
        for name, (_, stored) in sources.items()
    ]
    meta = None if calib_dtype is None else {"calibration_dtype": calib_dtype}
    with StreamingWriter(path, specs, metadata=meta) as out:
        for name in out.order:
            fd, stored = sources[name]
            with out.tensor(name) as sink:
                sink.copy(fd, stored.offset, stored.nbytes)


__all__ = ["LayerWriter", "PackedLayer", "assemble", "on_device"]
