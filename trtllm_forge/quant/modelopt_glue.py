"""Run a ModelOpt PTQ preset on exactly forge's target linears and read the result back.

ModelOpt calibrates (smoothing, AWQ scale search, ranges) and leaves its answer
on each quantized linear: the weight it smoothed, the weight and input
quantizers' ``amax`` and the input ``pre_quant_scale``. :func:`extract` turns
that into :class:`LinearQuant` records; forge's own writer does the layout
(never ModelOpt's exporter, which mutates the model and drops RoPE settings
under transformers 5).

ModelOpt prints progress to stdout; forge's stdout carries results only, so
its prints and warnings are captured and forwarded to ``progress.log``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import dependency_error
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.capture import decoder
from trtllm_forge.quant.result import LinearQuant, QuantResult

BATCH_SIZE = 8
_NO_PROGRESS = NullProgress()


@contextlib.contextmanager
def quiet(progress: Progress) -> Iterator[None]:
    """Route ModelOpt's prints and warnings to ``progress.log``."""
    out = io.StringIO()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            caught = recorded
            yield
    finally:
        # Logged after stdout is restored: the progress sink may itself print.
        lines = out.getvalue().splitlines() + [f"warning: {w.message}" for w in caught]
        for line in dict.fromkeys(line.strip() for line in lines):
            if line:
                progress.log(f"modelopt: {line}")


def mtq(progress: Progress = _NO_PROGRESS) -> ModuleType:
    """``modelopt.torch.quantization`` (about 7 s to import, so only when needed)."""
    try:
        with quiet(progress):
            import modelopt.torch.quantization as module  # type: ignore[import-untyped]
    except ImportError as exc:
        raise dependency_error(
            f"nvidia-modelopt is not importable: {exc}",
            hint="pip install 'nvidia-modelopt>=0.47' requests",
        ) from None
    loaded: ModuleType = module
    return loaded


def preset_numerics(preset: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The preset's weight and input quantizer settings (None = disabled)."""
    found: dict[str, dict[str, Any] | None] = {}
    for entry in preset["quant_cfg"]:
        name = entry.get("quantizer_name")
        if name in ("*weight_quantizer", "*input_quantizer") and "parent_class" not in entry:
            found[name] = (
                copy.deepcopy(entry["cfg"])
                if entry.get("enable", True) and "cfg" in entry
                else None
            )
    return found.get("*weight_quantizer"), found.get("*input_quantizer")


def target_config(
    preset: dict[str, Any],
    targets: list[str],
    *,
    weight_cfg: dict[str, Any] | None = None,
    algorithm: Any = None,
) -> dict[str, Any]:
    """A ModelOpt config quantizing only ``targets`` with the preset's numerics.

    Everything else (lm_head, excluded layers, attention BMMs) is disabled by name,
    rather than by the preset's wildcard list, so forge's exclusions are exact.
    """
    preset_weight, preset_input = preset_numerics(preset)
    weight = weight_cfg if weight_cfg is not None else preset_weight
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for name in targets:
        entries.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": copy.deepcopy(weight)})
        if preset_input is not None:
            entries.append(
                {"quantizer_name": f"{name}.input_quantizer", "cfg": copy.deepcopy(preset_input)}
            )
    return {
        "quant_cfg": entries,
        "algorithm": algorithm if algorithm is not None else preset.get("algorithm"),
    }


def calibrate(
    model: nn.Module,
    config: dict[str, Any],
    data: CalibrationData,
    progress: Progress = _NO_PROGRESS,
) -> nn.Module:
    """``mtq.quantize`` over the calibration windows (in place; returns the model)."""
    module = mtq(progress)
    batches = data.batches(BATCH_SIZE)

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for ids in batches:
                decoder(m)(input_ids=ids)

    with quiet(progress), _without_unused_plugins():
        quantized: nn.Module = module.quantize(model, _keep_awq_search(config), forward_loop)
    return quantized


def _keep_awq_search(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``awq_lite``'s documented ``debug`` switch on, so each linear keeps
    its search state (``module.awq_lite``) and :func:`extract` can read the fp32 scale the
    weight was smoothed with. The numerics are unchanged; :func:`extract` drops the state."""
    algorithm = config.get("algorithm")
    if algorithm == "awq_lite":
        algorithm = {"method": "awq_lite"}
    if not isinstance(algorithm, dict) or algorithm.get("method") != "awq_lite":
        return config
    return {**config, "algorithm": {**algorithm, "debug": True}}


def _smooth_factor(linear: Any) -> torch.Tensor | None:
    """The fp32 factor ModelOpt's ``apply_pre_quant_scale_and_smooth`` multiplied the
    weight by (``1 / float32(1 / best_scale)``, computed as it computes it, on its device),
    and ``awq_lite``'s kept search state dropped; None without one."""
    search = getattr(linear, "awq_lite", None)
    if search is None:
        return None
    del linear.awq_lite
    best = getattr(search, "best_scale", None)
    if best is None or not getattr(search, "is_enabled", False):
        return None
    pre_quant_scale = (1.0 / best).to(torch.float32)
    factor: torch.Tensor = (1.0 / pre_quant_scale).detach().reshape(-1).clone()
    return factor


# ModelOpt's plugin that rewrites every HF ``*Attention`` class from its source so that
# its KV-cache BMM quantizers can be inserted. forge never enables those quantizers (every
# quantizer but the targets' is disabled, and KV-cache ranges come from forge's own hooks,
# quant/capture.py:kv_ranges), so the rewrite is pure risk: it raised IndexError on BLOOM's attention and,
# under transformers 5.24, AssertionError on MPT's decorated forward, and it writes the
# generated class to a temporary file outside FORGE_HOME.
_UNUSED_PLUGINS = ("register_hf_attentions_on_the_fly",)


@contextlib.contextmanager
def _without_unused_plugins() -> Iterator[None]:
    """Run ``mtq.quantize`` without ModelOpt's on-the-fly plugins forge has no use for."""
    from modelopt.torch.quantization.plugins import custom  # type: ignore[import-untyped]

    original = set(custom.CUSTOM_MODEL_PLUGINS)
    unused = {p for p in original if getattr(p, "__name__", "") in _UNUSED_PLUGINS}
    custom.CUSTOM_MODEL_PLUGINS.difference_update(unused)
    try:
        yield
    finally:
        custom.CUSTOM_MODEL_PLUGINS.clear()
        custom.CUSTOM_MODEL_PLUGINS.update(original)


def _weight_amax(linear: Any) -> torch.Tensor:
    quantizer = linear.weight_quantizer
    if isinstance(quantizer, nn.Sequential):  # W4A8: [INT4 groups, FP8 per tensor]
        quantizer = quantizer[0]
    amax: torch.Tensor = quantizer.amax.detach().float()
    out_features = int(linear.weight.shape[0])
    blocks = getattr(quantizer, "block_sizes", None) or {}
    if blocks.get(-1) and blocks.get("type") != "dynamic":
        # One amax per (row, group); with a single group per row it has the numel of a
        # per-channel amax, so the quantizer's config decides, not the shape.
        return amax.reshape(out_features, -1)
    if amax.numel() == 1:
        return amax.reshape(())
    return amax.reshape(out_features)


def _second_weight_amax(linear: Any) -> torch.Tensor | None:
    """The FP8 stage of a sequential (W4A8) weight quantizer: its per-tensor range."""
    quantizer = linear.weight_quantizer
    if not isinstance(quantizer, nn.Sequential):
        return None
    stage: Any = quantizer[-1]
    if stage.amax is None:
        return None
    amax: torch.Tensor = stage.amax.detach().float().reshape(())
    return amax


def _input_amax(linear: Any) -> torch.Tensor | None:
    quantizer = linear.input_quantizer
    if not quantizer.is_enabled or quantizer.amax is None or quantizer.amax.numel() != 1:
        return None  # weight-only, or dynamic (per-token) activations
    amax: torch.Tensor = quantizer.amax.detach().float().reshape(())
    return amax


def extract(model: nn.Module, targets: list[str]) -> QuantResult:
    """Read ModelOpt's calibrated state of each target linear."""
    modules: dict[str, Any] = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        linear = modules[name]
        pqs = linear.input_quantizer.pre_quant_scale
        result.linears[name] = LinearQuant(
            weight=linear.weight.detach().float().clone(),
            weight_amax=_weight_amax(linear),
            input_amax=_input_amax(linear),
            pre_quant_scale=None if pqs is None else pqs.detach().float().reshape(-1).clone(),
            fp8_weight_amax=_second_weight_amax(linear),
            smooth_factor=_smooth_factor(linear),
        )
    return result


def quantize(
    model: nn.Module,
    data: CalibrationData | None,
    targets: list[str],
    config: Callable[[], dict[str, Any]],
    progress: Progress = _NO_PROGRESS,
    *,
    method: str,
) -> QuantResult:
    """A ModelOpt method's calibration: the config ``config()`` builds (ModelOpt is imported
    only after the data is known to be there), then the ranges read back."""
    if data is None:
        raise ValueError(f"{method} needs calibration data")
    calibrate(model, config(), data, progress)
    return extract(model, targets)
