"""Layer-wise calibration's files: each layer's checkpoint tensors and calibration
records as it finishes, then the checkpoint assembled from them tensor by tensor.

A layer's tensors are made by the whole-model writer's own functions (quant/writer.py)
on the plan restricted to that layer, so the assembled ``rank0.safetensors`` holds the
tensors :func:`writer.write_checkpoint` would write; ``linears.safetensors`` merges the
per-layer records quant/linear_records.py writes. Nothing larger than one tensor (one
layer while it is written) is in memory.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from trtllm_forge.checkpoint.io import CheckpointReader, rank_file, write_config
from trtllm_forge.checkpoint.safetensors_stream import ST_TO_TORCH, StreamingWriter, TensorSpec
from trtllm_forge.context import Progress
from trtllm_forge.quant import writer
from trtllm_forge.quant.device import Placement
from trtllm_forge.quant.layerwise_store import LayerStore
from trtllm_forge.quant.linear_records import RECORDS_FILE, OriginalWeights, save_records
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
        transposed = {
            source: target.rule is not None and target.rule.fusion == "transpose"
            for target in plan.quantized
            for source in target.sources
        }
        self.originals = OriginalWeights(hf_dir, transposed, stack)
        self.calib_dtype = calib_dtype

    def write(
        self, store: LayerStore, index: int, spec: QuantSpec, plan: TargetPlan, result: QuantResult
    ) -> tuple[list[Path], dict[str, int]]:
        """``layer-k.safetensors`` and ``records-k.safetensors``; the records' counts."""
        fused = writer._fused_linears(spec, plan, result) if spec.quant_algo else {}
        new = writer.quantized_tensors(spec, fused, self.dtype)
        new.update(writer.folded_norms(spec, plan, fused, self.reader, self.dtype))
        new.update(writer.kv_tensors(spec, result))
        tensors_file = store.path("layer", index, "safetensors")
        save_file(new, str(tensors_file))
        records_file = store.path("records", index, "safetensors")
        counts = save_records(records_file, result, self.originals, self.calib_dtype)
        return [tensors_file, records_file], counts


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
    committed layers; the summary quantize_checkpoint returns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        reader = stack.enter_context(CheckpointReader(canonical_dir))
        new = _opened(stack, [store.path("layer", i, "safetensors") for i in range(layers)])
        dropped = writer._replaced_weights(plan, spec)
        kept = [n for n in reader.names() if n not in dropped and n not in new]
        specs = [
            TensorSpec(n, ST_TO_TORCH[str(reader.get_slice(n).get_dtype())], reader.shape(n))
            for n in kept
        ]
        specs += [_spec(name, handle) for name, handle in new.items()]
        with (
            progress.task("writing quantized checkpoint", total=len(specs)) as task,
            StreamingWriter(out_dir / rank_file(0), specs) as out,
        ):
            for name in out.order:
                out.write(name, new[name].get_tensor(name) if name in new else reader.get(name))
                task.advance()
        config = dict(reader.config)
    _merge_records(store, layers, out_dir / RECORDS_FILE, placement.dtype)
    commits = [store.done(i) or {} for i in range(layers)]
    config["quantization"] = writer.quantization_block(spec, plan)
    config["forge"] = {**(config.get("forge") or {}), "quantization": dict(forge_info)}
    write_config(out_dir, config)
    return {
        "tensors": len(specs),
        "quantized_modules": [t.module for t in plan.quantized] if spec.quant_algo else [],
        "excluded_modules": [t.module for t in plan.excluded],
        "quantization": config["quantization"],
        "files": ["config.json", rank_file(0)],
        "records": {
            field: sum(int(c.get("records", {}).get(field, 0)) for c in commits)
            for field in ("linears", "stored_weights")
        },
        "kv_amax": {str(i): c["kv"] for i, c in enumerate(commits) if c.get("kv") is not None},
    }


def _opened(stack: ExitStack, files: list[Path]) -> dict[str, Any]:
    """Tensor name → the open (memory-mapped) file holding it."""
    found: dict[str, Any] = {}
    for file in files:
        handle = stack.enter_context(safe_open(str(file), framework="pt"))
        found.update(dict.fromkeys(handle.keys(), handle))
    return found


def _spec(name: str, handle: Any) -> TensorSpec:
    piece = handle.get_slice(name)
    return TensorSpec(name, ST_TO_TORCH[str(piece.get_dtype())], tuple(piece.get_shape()))


def _merge_records(store: LayerStore, layers: int, path: Path, calib_dtype: str) -> None:
    """One ``linears.safetensors`` from the per-layer records (same names and values)."""
    with ExitStack() as stack:
        files = [store.path("records", i, "safetensors") for i in range(layers)]
        found = _opened(stack, files)
        specs = [_spec(name, handle) for name, handle in found.items()]
        meta = {"calibration_dtype": calib_dtype}
        with StreamingWriter(path, specs, metadata=meta) as out:
            for name in out.order:
                out.write(name, found[name].get_tensor(name))


__all__ = ["LayerWriter", "assemble"]
