"""The calibrate stage's library entry: HF model + canonical checkpoint → quantized checkpoint.

Order of work: validate everything that can be validated without weights
(method, params, exclude patterns, group-size divisibility), load the
calibration text, load the HF model in float32 on CPU, record KV-cache ranges
(before any method edits weights), run the method, write the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from trtllm_forge.checkpoint.convert import load_hf_config
from trtllm_forge.checkpoint.layout import module_dims
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import recipe_error, source_error
from trtllm_forge.quant import calibration as calib
from trtllm_forge.quant import registry
from trtllm_forge.quant.capture import kv_ranges
from trtllm_forge.quant.device import Placement
from trtllm_forge.quant.head import head_record
from trtllm_forge.quant.moe import quantize_with_experts, unfuse_experts
from trtllm_forge.quant.params import KV_CACHE_ALGOS
from trtllm_forge.quant.result import QuantResult
from trtllm_forge.quant.targets import (
    HEAD,
    TargetPlan,
    linear_dims,
    plan_targets,
)
from trtllm_forge.quant.writer import QuantSpec, write_checkpoint

_NO_PROGRESS = NullProgress()
Calibration = calib.CalibrationSpec | torch.Tensor | Sequence[str]


def _logged_calibration_data(
    calibration: Calibration | None, tokenizer_dir: Path, progress: Progress
) -> calib.CalibrationData:
    data = _calibration_data(calibration, tokenizer_dir)
    progress.log(
        f"calibration: {data.tokens.shape[0]} x {data.tokens.shape[1]} tokens ({data.source})"
    )
    return data


def quantize_checkpoint(
    *,
    hf_dir: Path,
    canonical_dir: Path,
    out_dir: Path,
    method: str,
    params: Mapping[str, Any] | None = None,
    kv_cache: str | None = None,
    exclude: Sequence[str] = ("lm_head",),
    calibration: Calibration | None = None,
    tokenizer_dir: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Quantize a model and write the TensorRT-LLM checkpoint into ``out_dir``.

    Args:
        hf_dir: the original HF snapshot (weights are re-read in float32 from here).
        canonical_dir: the unquantized canonical checkpoint (names, config, dtype).
        out_dir: where ``config.json`` + ``rank0.safetensors`` are written.
        method: a :mod:`registry` name (``int8_wo``, ``awq``, ...).
        params: the method's parameters (validated; defaults filled in).
        kv_cache: ``None``/``"none"``, ``"int8"`` or ``"fp8"``.
        exclude: fnmatch patterns of modules left unquantized (``targets.plan_targets``).
        calibration: a :class:`CalibrationSpec` (default: built-in corpus, 64 × 256
            tokens, seed 0), ready token windows ``[samples, seq_len]``, or texts.
        tokenizer_dir: where the tokenizer lives (default ``hf_dir``).
        device: ``cpu``, ``cuda`` or ``auto`` — where calibration runs (see
            :mod:`trtllm_forge.quant.device`).
        dtype: the model's compute dtype while calibrating (``float32`` default).

    Returns:
        A JSON-serialisable summary: tensors written, quantized/excluded modules,
        the config ``quantization`` block, calibration digest, tool versions.
    """
    spec, plan = _checked_plan(method, params, kv_cache, Path(hf_dir), exclude)
    placement = Placement.of(device, dtype)  # exit 4 for cuda without a GPU, before any work
    data = None
    if registry.get(method).needs_data or spec.kv_cache:
        data = _logged_calibration_data(calibration, Path(tokenizer_dir or hf_dir), progress)
    result, data = _calibrated(spec, plan, Path(hf_dir), data, placement, progress)
    forge_info = _forge_info(spec, exclude, data)
    if "experts" in result.stats:  # which experts calibration reached (quant/moe.py)
        forge_info["experts"] = result.stats["experts"]
    summary = write_checkpoint(
        Path(canonical_dir),
        Path(out_dir),
        spec=spec,
        plan=plan,
        result=result,
        forge_info=forge_info,
        progress=progress,
    )
    summary.update(forge_info)
    summary["records"] = _save_records(Path(out_dir), Path(hf_dir), plan, result, placement.dtype)
    summary["calibration_placement"] = {"device": placement.device, "dtype": placement.dtype}
    summary["kv_amax"] = {str(layer): list(pair) for layer, pair in sorted(result.kv_amax.items())}
    return summary


def _checked_plan(
    method: str,
    params: Mapping[str, Any] | None,
    kv_cache: str | None,
    hf_dir: Path,
    exclude: Sequence[str],
) -> tuple[QuantSpec, TargetPlan]:
    """The method, its parameters and the modules it quantizes; what the format cannot
    represent is refused here, before any weight loads."""
    spec = QuantSpec(method, registry.validate_params(method, params or {}), _kv_name(kv_cache))
    hf_config = load_hf_config(hf_dir)
    head = bool(getattr(spec.params, "quantize_lm_head", False))
    plan = plan_targets(hf_config, list(exclude), quantize_head=head)
    preflight(spec, plan, hf_config)
    return spec, plan


def _calibrated(
    spec: QuantSpec,
    plan: TargetPlan,
    hf_dir: Path,
    data: calib.CalibrationData | None,
    placement: Placement,
    progress: Progress,
) -> tuple[QuantResult, calib.CalibrationData | None]:
    """Run the method on the model where ``placement`` says; the KV-cache ranges are
    recorded first, before the method edits any weight. Returns the result on the CPU
    and the calibration data as placed."""
    model = placement.model(load_hf_model(hf_dir))
    experts = unfuse_experts(model, load_hf_config(hf_dir))  # MoE: one nn.Linear per expert
    data = placement.data(data)
    kv = kv_ranges(model, data.batches(8), progress) if spec.kv_cache and data is not None else {}
    method = registry.get(spec.method)
    algorithm = method.load()
    if experts is None:
        result = algorithm.quantize_model(model, data, spec.params, plan.hf_modules(), progress)
    else:
        result = quantize_with_experts(
            algorithm.quantize_model,
            model,
            experts,
            data,
            spec.params,
            plan.hf_modules(),
            progress,
            calibrated=method.needs_data,
        )
    result = placement.to_cpu(result)
    result.head = head_record(model, spec.params) if plan.quantize_head else None
    result.kv_amax = kv
    return result, data


def _save_records(
    out_dir: Path, hf_dir: Path, plan: TargetPlan, result: QuantResult, dtype: str
) -> dict[str, int]:
    """Keep the per-module calibration result for the Hugging Face targets."""
    from contextlib import ExitStack

    from trtllm_forge.quant.linear_records import RECORDS_FILE, OriginalWeights, save_records

    transposed = {
        source: target.rule is not None and target.rule.fusion == "transpose"
        for target in plan.quantized
        for source in target.sources
    }
    with ExitStack() as stack:
        originals = OriginalWeights(hf_dir, transposed, stack)
        return save_records(out_dir / RECORDS_FILE, result, originals, dtype)


def _kv_name(kv_cache: str | None) -> str | None:
    if kv_cache in (None, "none"):
        return None
    if kv_cache not in KV_CACHE_ALGOS:
        raise recipe_error(
            f"unknown kv_cache format {kv_cache!r}",
            hint=f"use one of: none, {', '.join(KV_CACHE_ALGOS)}",
        )
    return kv_cache


def preflight(spec: QuantSpec, plan: TargetPlan, hf_config: Mapping[str, Any]) -> None:
    """Reject shapes and combinations the format cannot represent, before any weight loads."""
    group = getattr(spec.params, "group_size", None)
    record = registry.get(spec.method).record
    dims = linear_dims(hf_config)
    sites = [(t.module, t.kind) for t in plan.quantized if spec.quant_algo]
    sites += [(HEAD, HEAD)] if plan.quantize_head else []
    for module, kind in sites:
        out_features, in_features = module_dims(kind, dims)
        if group is not None and in_features % group:
            raise recipe_error(
                f"{module}: in_features {in_features} is not a multiple of group_size {group}",
                hint="pick a group size dividing every layer's input size, or exclude the layer",
            )
        misfit = record.linear_misfit
        why = misfit(spec.params, out_features, in_features) if misfit else None
        if why is not None:
            raise recipe_error(f"{module}: {why[0]}", hint=why[1])
        if group is not None and out_features % 2:
            raise recipe_error(
                f"{module}: INT4 packing needs an even out_features ({out_features})"
            )
    if record.check_plan is not None:
        record.check_plan(spec.params, plan, hf_config)


def _calibration_data(
    calibration: Calibration | None, tokenizer_dir: Path
) -> calib.CalibrationData:
    if isinstance(calibration, torch.Tensor):
        return calib.from_tokens(calibration)
    if calibration is None or isinstance(calibration, calib.CalibrationSpec):
        return calib.load_calibration(calibration or calib.CalibrationSpec(), tokenizer_dir)
    return calib.from_texts(list(calibration), tokenizer_dir, calib.CalibrationSpec())


def load_hf_model(hf_dir: Path) -> nn.Module:
    """The HF causal LM in float32 on CPU, eval mode, never with remote code; for an
    architecture transformers does not ship, forge's own model of it (checkpoint/native.py)."""
    import transformers

    from trtllm_forge.checkpoint.native import native_model

    native = native_model(Path(hf_dir))
    if native is not None:
        return native
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    # transformers renamed torch_dtype to dtype in 4.56.
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = torch.float32
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise source_error(
            f"cannot load the HF model from {hf_dir}: {exc}".splitlines()[0],
            hint="calibration needs the original HF snapshot (config.json + safetensors)",
        ) from None
    module = cast(nn.Module, model)
    module.train(False)
    _conv1d_as_linear(module)
    return module


def _conv1d_as_linear(model: nn.Module) -> None:
    """Swap HF ``Conv1D`` layers (GPT-2: weight stored [in, out]) for equivalent nn.Linear,
    so every method reads ``weight`` as [out, in] like the checkpoint stores it."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)


def _forge_info(
    spec: QuantSpec, exclude: Sequence[str], data: calib.CalibrationData | None
) -> dict[str, Any]:
    return {
        "method": spec.method,
        "params": spec.params.model_dump(mode="json"),
        "kv_cache": spec.kv_cache,
        "exclude": list(exclude),
        "calibration": None
        if data is None
        else {
            "digest": data.digest,
            "source": data.source,
            "samples": int(data.tokens.shape[0]),
            "seq_len": int(data.tokens.shape[1]),
            "source_tokens": data.source_tokens,
        },
        "tools": registry.tool_versions(spec.method),
    }


__all__ = ["quantize_checkpoint", "load_hf_model", "preflight"]
