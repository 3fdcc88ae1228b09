"""Write a complete, quantized Hugging Face model folder from a calibrate artifact.

Inputs: the fetch snapshot (HF names, original weights, config, tokenizer) and the
calibrate artifact (its ``config.json`` says what was asked; ``linears.safetensors``
holds each linear's calibration). Output: ``config.json`` with a
``quantization_config``, ``hf_quant_config.json`` (ModelOpt target),
``generation_config.json``, the tokenizer files, sharded safetensors with an index,
and ``forge.json`` (what produced it, the tp/pp serving hint). Weights stay
unsharded: serving stacks shard at load time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.checkpoint.convert import load_hf_config
from trtllm_forge.checkpoint.io import read_config
from trtllm_forge.checkpoint.snapshot import SnapshotTensors
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import recipe_error, store_error
from trtllm_forge.hf import ct_target, modelopt_target
from trtllm_forge.hf.groups import LinearGroup, linear_groups
from trtllm_forge.hf.shards import ShardWriter
from trtllm_forge.models.registry import family_for
from trtllm_forge.quant import records as rec
from trtllm_forge.quant.linear_records import RECORDS_FILE, CalibrationRecords, OriginalWeights
from trtllm_forge.quant.result import LinearQuant, share_input
from trtllm_forge.quant.targets import TargetPlan, linear_targets, plan_targets

FORGE_INFO = "forge.json"
HF_QUANT_CONFIG = "hf_quant_config.json"
# The ModelOpt exporter release whose output forge reproduces (producer.version).
MODELOPT_FORMAT_VERSION = "0.47.0"
COMPRESSED_TENSORS_FORMAT_VERSION = "0.20.0"
EXTRA_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NO_PROGRESS = NullProgress()


@dataclass(frozen=True)
class Request:
    """What the calibrate artifact was made with (from its config.json ``forge.quantization``)."""

    method: str
    params: Mapping[str, Any]
    kv: str | None
    exclude: list[str]
    dtype: str

    @property
    def format(self) -> rec.QuantFormat | None:
        name = rec.format_name(self.method, dict(self.params))
        return None if name is None else rec.FORMATS[name]


def read_request(calibrated_dir: Path) -> Request:
    config = read_config(calibrated_dir)
    info = (config.get("forge") or {}).get("quantization") or {}
    return Request(
        method=str(info.get("method", "none")),
        params=dict(info.get("params") or {}),
        kv=info.get("kv_cache"),
        exclude=list(info.get("exclude") or ["lm_head"]),
        dtype=str(config["dtype"]),
    )


def write_hf_folder(
    *,
    hf_dir: Path,
    calibrated_dir: Path,
    out_dir: Path,
    target: rec.Target,
    tp: int = 1,
    pp: int = 1,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Write the folder into ``out_dir`` (created); return a JSON summary."""
    request = read_request(Path(calibrated_dir))
    reason = rec.why_not(target, _fmt_name(request), request.kv)
    if reason:
        raise recipe_error(
            f"the {target} format cannot carry this quantization: {reason}",
            hint=f"formats that can: {', '.join(rec.carriers(_fmt_name(request), request.kv)) or 'none'}",
        )
    quantized = request.format is not None or request.kv is not None
    if quantized and not (Path(calibrated_dir) / RECORDS_FILE).is_file():
        raise store_error(
            f"{calibrated_dir} has no {RECORDS_FILE}: it was calibrated before the "
            "Hugging Face targets existed",
            hint="recalibrate: forge build RECIPE --force calibrate",
        )
    hf_config = load_hf_config(Path(hf_dir))
    plan = plan_targets(hf_config, request.exclude)
    conv1d = [name for name, transposed in _transposed(plan).items() if transposed]
    if request.format is not None and conv1d:
        raise recipe_error(
            f"{conv1d[0]} is a Conv1D layer, not nn.Linear: neither Hugging Face format quantizes it",
            hint="use build.backend: onnxruntime for this model's quantized weights",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out_dir)
    with ExitStack() as stack:
        originals = OriginalWeights(Path(hf_dir), _transposed(plan), stack)
        records = None
        if (Path(calibrated_dir) / RECORDS_FILE).is_file():
            records = CalibrationRecords(Path(calibrated_dir) / RECORDS_FILE, originals, stack)
        layout = _Layout(target, request, hf_config, plan, records)
        with progress.task("writing Hugging Face folder", total=None) as task:
            for name, tensor in layout.tensors(Path(hf_dir), stack):
                writer.add(name, tensor)
                task.advance()
    files = writer.close()
    files += _write_configs(out_dir, Path(hf_dir), hf_config, layout, tp=tp, pp=pp)
    return {"target": target, "files": sorted(files), **layout.summary()}


def _fmt_name(request: Request) -> str | None:
    return rec.format_name(request.method, dict(request.params))


def _transposed(plan: TargetPlan) -> dict[str, bool]:
    return {
        source: t.rule is not None and t.rule.fusion == "transpose"
        for t in (*plan.quantized, *plan.excluded)
        for source in t.sources
    }


class _Layout:
    """The target's tensors for one model: quantized groups, folded norms, KV scales,
    then every other snapshot tensor in the checkpoint dtype."""

    def __init__(
        self,
        target: rec.Target,
        request: Request,
        hf_config: Mapping[str, Any],
        plan: TargetPlan,
        records: CalibrationRecords | None,
    ) -> None:
        self.target = target
        self.request = request
        self.fmt = request.format
        self.dtype = _DTYPES[request.dtype]
        self.hf_config = hf_config
        self.plan = plan
        self.records = records
        self.replaced: set[str] = set()
        self.norms: dict[str, torch.Tensor] = {}

    def tensors(self, hf_dir: Path, stack: ExitStack) -> Iterator[tuple[str, torch.Tensor]]:
        snapshot = SnapshotTensors(hf_dir, stack)
        if self.fmt is not None:
            for group in linear_groups(self.hf_config, self.plan):
                yield from self._group(group, snapshot)
        if self.request.kv:
            yield from self._kv()
        yield from self.norms.items()
        for name in snapshot.names():
            if name in self.replaced or name in self.norms:
                continue
            tensor = snapshot.get(name)
            yield name, tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _group(
        self, group: LinearGroup, snapshot: SnapshotTensors
    ) -> Iterator[tuple[str, torch.Tensor]]:
        assert self.fmt is not None and self.records is not None
        parts = [self.records.linear(m) for m in group.modules]
        mapping = self.fmt.target(self.target)
        keep_pqs = True
        if len(parts) > 1 and getattr(mapping, "share_input", True):
            parts = share_input(parts)
        if isinstance(mapping, rec.ModelOpt) and mapping.fold_pre_quant_scale and len(parts) > 1:
            keep_pqs = not self._fold_into_norm(group, parts[0], snapshot)
        for module, lq in zip(group.modules, parts, strict=True):
            self.replaced.add(f"{module}.weight")
            for param, tensor in self._linear(lq, keep_pqs).items():
                yield f"{module}.{param}", tensor

    def _linear(self, lq: LinearQuant, keep_pqs: bool) -> dict[str, torch.Tensor]:
        assert self.fmt is not None
        if self.target == "modelopt":
            return modelopt_target.linear_tensors(
                self.fmt, lq, self.dtype, keep_pre_quant_scale=keep_pqs
            )
        return ct_target.linear_tensors(self.fmt, lq, self.dtype)

    def _fold_into_norm(
        self, group: LinearGroup, lq: LinearQuant, snapshot: SnapshotTensors
    ) -> bool:
        """ModelOpt's AWQ rule: the group's shared pre-quant scale multiplies the norm."""
        if group.norm is None or lq.pre_quant_scale is None or group.norm_rule is None:
            return False
        pqs = lq.pre_quant_scale.float()
        weight = snapshot.get(f"{group.norm}.weight").float()
        if group.norm_rule.fusion == "add_one":
            folded = (weight + 1.0) * pqs - 1.0
        else:
            folded = weight * pqs
        self.norms[f"{group.norm}.weight"] = folded.to(self.dtype)
        if snapshot.has(f"{group.norm}.bias"):
            self.norms[f"{group.norm}.bias"] = (
                snapshot.get(f"{group.norm}.bias").float() * pqs
            ).to(self.dtype)
        return True

    def _kv(self) -> Iterator[tuple[str, torch.Tensor]]:
        assert self.request.kv is not None and self.records is not None
        projections = _kv_projections(self.hf_config)
        for layer, (k_amax, v_amax) in sorted(self.records.kv_amax.items()):
            k_proj, v_proj = projections[layer]
            if self.target == "modelopt":
                k, v = modelopt_target.kv_tensors(self.request.kv, k_amax, v_amax)
                yield f"{k_proj}.k_scale", k
                yield f"{v_proj}.v_scale", v
            else:
                attention = k_proj.rsplit(".", 1)[0]
                tensors = ct_target.kv_tensors(self.request.kv, k_amax, v_amax, self.dtype)
                for param, tensor in tensors.items():
                    yield f"{attention}.{param}", tensor

    def exclude_modules(self) -> list[str]:
        embedding = _embedding_name(self.hf_config)
        excluded = [s for t in self.plan.excluded for s in t.sources]
        if self.target == "modelopt":
            return ["lm_head", *([embedding] if embedding else []), *excluded]
        return ["lm_head", *excluded]

    def group_size(self) -> int | None:
        # FP8 block scales: the tile edge, also the activations' channel group.
        value = self.request.params.get("group_size", self.request.params.get("block_size"))
        return int(value) if value is not None else None

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.request.method,
            "format": self.fmt.name if self.fmt else None,
            "kv_cache": self.request.kv,
            "group_size": self.group_size(),
            "quantized_modules": len(self.replaced),
            "excluded_modules": self.exclude_modules(),
            "dtype": self.request.dtype,
        }


def _kv_projections(hf_config: Mapping[str, Any]) -> dict[int, tuple[str, str]]:
    """Layer → (k projection, v projection) HF module names."""
    found = {}
    for target in linear_targets(hf_config):
        if target.kind != "attention.qkv":
            continue
        if len(target.sources) != 3:
            raise recipe_error(
                f"KV-cache scales of a Hugging Face target live on separate k/v projections; "
                f"{target.sources[0]} fuses q, k and v",
                hint="use build.backend: onnxruntime for this model's quantized KV cache",
            )
        found[target.layer] = (target.sources[1], target.sources[2])
    return found


def _embedding_name(hf_config: Mapping[str, Any]) -> str | None:
    for rule in family_for(hf_config).tensor_plan(hf_config).rules:
        if rule.target == "transformer.vocab_embedding.weight":
            return rule.sources[0].removesuffix(".weight")
    return None


def _write_configs(
    out_dir: Path,
    hf_dir: Path,
    hf_config: Mapping[str, Any],
    layout: _Layout,
    *,
    tp: int,
    pp: int,
) -> list[str]:
    config = dict(hf_config)
    config["dtype"] = layout.request.dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = layout.request.dtype
    written = ["config.json", FORGE_INFO]
    quantized = layout.fmt is not None or layout.request.kv is not None
    if quantized and layout.target == "modelopt":
        hf_quant = modelopt_target.quant_config(
            layout.fmt,
            layout.request.kv,
            group_size=layout.group_size(),
            exclude=layout.exclude_modules(),
            producer_version=MODELOPT_FORMAT_VERSION,
        )
        _write_json(out_dir / HF_QUANT_CONFIG, hf_quant)
        config["quantization_config"] = modelopt_target.hf_quantization_config(hf_quant)
        written.append(HF_QUANT_CONFIG)
    elif quantized:
        config["quantization_config"] = ct_target.quantization_config(
            layout.fmt,
            layout.request.kv,
            group_size=layout.group_size(),
            act_order=bool(layout.request.params.get("act_order")),
            ignore=layout.exclude_modules(),
            version=COMPRESSED_TENSORS_FORMAT_VERSION,
        )
    _write_json(out_dir / "config.json", config)
    for name in EXTRA_FILES:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out_dir / name)
            written.append(name)
    _write_json(
        out_dir / FORGE_INFO,
        {
            "producer": "trtllm-forge",
            "target": layout.target,
            **layout.summary(),
            # Weights are unsharded; this is what the recipe asked the server to use.
            "serving": {"tensor_parallel_size": tp, "pipeline_parallel_size": pp},
        },
    )
    return written


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


__all__ = ["write_hf_folder", "read_request", "Request", "FORGE_INFO", "HF_QUANT_CONFIG"]
