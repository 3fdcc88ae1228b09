"""What a build will need (disk under FORGE_HOME, host memory, GPU memory) against what
this machine has, before any work: printed by `forge plan`, refused with exit 4 when it
cannot fit (issue 19).

Every figure is an estimate from the model's size (safetensors headers or a GGUF header,
and config.json: never the weights) and the recipe's choices, for the stages that will
run. Disk is what the stages add to the store (identical files are stored once,
store/blobs.py); memory is the peak of the stages that run:

========== ============================================ =========================================
stage      disk                                         memory
========== ============================================ =========================================
fetch      0 for a local folder or the hub (the store   a GGUF: its tensors dequantized to float32
           references them); a GGUF: float32 tensors
convert    every tensor in ``convert.dtype``            streaming: the largest tensor
calibrate  0 for method none; else the linears at the   ``whole``: the model in calibration.dtype
           method's bits and the rest in                and two copies of the activations (on
           ``convert.dtype``, twice (the checkpoint and cuda, on the GPU; the host holds the
           the per-module records); ``layerwise`` also  model while it loads); ``layerwise``: the
           holds its committed layers until assembly    embedding, one layer and the activations
shard      0 at tp = pp = 1 (the calibrated file); else streaming
           the calibrated bytes
build      onnxruntime portable, unquantized: the       streaming; tensorrt: the engine on host
           embedding (the engine references the shard,  and GPU
           engine/onnx/shared.py); else the calibrated
           bytes (tensorrt: twice, its ONNX and plan)
verify     reports only                                 the float32 model and its engine, one at
                                                        a time (engine/streaming.py), plus the
                                                        runtime's load-time copies
========== ============================================ =========================================

Caps below what the machine has (a shared machine, a CI runner, tests):
``FORGE_DISK_BUDGET``, ``FORGE_HOST_MEMORY_BUDGET``, ``FORGE_DEVICE_MEMORY_BUDGET`` take
a size (``500M``, ``8G``, ``1.5GB``, bytes); the smaller of the cap and the machine is
the budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError, dependency_error

GB = 1e9
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Linear weights' stored bits per method (scales and zero points are a few percent more:
# _SCALE_SHARE). An unknown method counts as 8 bits.
WEIGHT_BITS = {
    "int8_wo": 8,
    "smoothquant": 8,
    "fp8": 8,
    "fp8_block": 8,
    "int4_wo": 4,
    "awq": 4,
    "gptq": 4,
    "w4a8_awq": 4,
    "nvfp4": 4,
}
_SCALE_SHARE = 1.1
PROCESS_BASE = int(0.6 * GB)  # torch, transformers and onnxruntime imported, nothing loaded
# Convert and shard stream tensors in blocks: 0.26 GB peak RSS for the 7B shape
# (docs/performance.md, "Results"); the base plus one float32 tensor bounds them.
STREAM_BASE = int(0.4 * GB)
# quant/layerwise.py's STREAM_BOUND: activations held in memory up to this, mapped beyond.
LAYERWISE_STREAM_BOUND = 1 << 30
# Tensors a quantization leaves in convert.dtype (token embedding, head, positions).
_UNQUANTIZED = re.compile(r"embed|wte|wpe|lm_head|token_embd|^output\.weight$")
# The token embedding table, which the portable lowering writes itself (decoder.py reads
# it for its shape), and the separate head that tells a tied model from an untied one.
_TOKEN_TABLE = re.compile(r"embed_tokens|\bwte\b|word_embeddings|token_embd|embed_in")
_HEAD = re.compile(r"lm_head|embed_out|^output\.weight$")
CAPS = {
    "disk": "FORGE_DISK_BUDGET",
    "host": "FORGE_HOST_MEMORY_BUDGET",
    "device": "FORGE_DEVICE_MEMORY_BUDGET",
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSize:
    """The model's dimensions that decide what a build stores and holds."""

    params: int  # every tensor's elements
    source_bytes: int  # as the source stores them
    embed_params: int  # elements of the tensors a quantization leaves alone
    written_params: int  # elements a shared portable engine still writes (the table; tied: twice)
    largest: int  # elements of the largest tensor
    layers: int
    hidden: int


def size_from_tensors(
    tensors: Mapping[str, tuple[tuple[int, ...], int]], config: Mapping[str, Any]
) -> ModelSize:
    """From name → (shape, stored bytes) and the model's config.json."""
    params = embed = table = largest = stored = 0
    head = False
    for name, (shape, nbytes) in tensors.items():
        count = 1
        for dim in shape:
            count *= int(dim)
        params += count
        stored += nbytes
        largest = max(largest, count)
        embed += count if _UNQUANTIZED.search(name) else 0
        table += count if _TOKEN_TABLE.search(name) else 0
        head = head or bool(_HEAD.search(name))
    text = config.get("text_config") or config
    return ModelSize(
        params,
        stored,
        embed,
        table if head else 2 * table,  # a tied head: the table transposed, written again
        largest,
        int(text.get("num_hidden_layers") or text.get("n_layer") or 1),
        int(text.get("hidden_size") or text.get("n_embd") or 0),
    )


def safetensors_tensors(folder: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Every tensor of the folder's ``*.safetensors`` files, from their headers only
    (the format: an 8-byte little-endian header length, then the JSON header)."""
    out: dict[str, tuple[tuple[int, ...], int]] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with file.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                out[name] = (tuple(info["shape"]), int(end) - int(begin))
    return out


@dataclass(frozen=True)
class Choices:
    """The recipe's fields the estimate reads (a candidate fix changes one of them)."""

    source: str  # "path", "hf" or "gguf"
    convert_dtype: str
    method: str
    kv_cache: str
    calib_mode: str
    calib_device: str
    calib_dtype: str
    calib_tokens: int  # samples × seq_len
    tp: int
    pp: int
    backend: str
    profile: str
    verify: bool
    verify_device: str

    @classmethod
    def of(cls, recipe: Any) -> Choices:
        src, quant, calib = recipe.source, recipe.quantize, recipe.quantize.calibration
        return cls(
            "gguf" if src.gguf is not None else "path" if src.path is not None else "hf",
            recipe.convert.dtype,
            quant.method,
            quant.kv_cache,
            getattr(calib, "mode", "whole"),  # the field quant/layerwise.py reads
            calib.device,
            calib.dtype,
            calib.samples * calib.seq_len,
            recipe.parallel.tp,
            recipe.parallel.pp,
            recipe.build.backend,
            recipe.build.profile,
            bool(recipe.verify.enabled),
            getattr(recipe.verify, "device", "cpu"),
        )

    @property
    def calibrates(self) -> bool:
        return self.method != "none" or self.kv_cache != "none"


@dataclass
class Needs:
    """Per stage: disk added, host and device memory peaks (bytes)."""

    disk: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)

    def peak(self, kind: str) -> tuple[int, str | None]:
        table: dict[str, int] = getattr(self, kind)
        if kind == "disk":
            return sum(table.values()), None
        if not table:
            return 0, None
        stage = max(table, key=lambda s: table[s])
        return table[stage], stage


def needs(size: ModelSize, c: Choices, stages: list[str]) -> Needs:
    """What the ``stages`` that will run need, for a model of ``size``."""
    out = Needs()
    converted = size.params * BYTES[c.convert_dtype]
    calibrated = _calibrated_bytes(size, c)
    stream = STREAM_BASE + size.largest * 4
    if "fetch" in stages and c.source == "gguf":
        out.disk["fetch"] = size.params * 4
        out.host["fetch"] = PROCESS_BASE + size.params * 4 + size.source_bytes
    if "convert" in stages:
        out.disk["convert"] = converted
        out.host["convert"] = stream
    if "calibrate" in stages and c.calibrates:
        written = 2 * calibrated + (calibrated if c.calib_mode == "layerwise" else 0)
        out.disk["calibrate"] = written
        _calibration_memory(size, c, out)
    if "build" in stages:
        _build_needs(size, c, calibrated, stream, out)
    if "verify" in stages and c.verify:
        # One float32 model at a time, plus the engine's load-time copies and an untied
        # head: 3.46 GiB for a 494M model (docs/bench.md, bench.verify_memory).
        weights = size.params * 4 * 3 // 2
        out.host["verify"] = PROCESS_BASE + weights
        if c.verify_device == "cuda":
            out.device["verify"] = weights
    return out


def _calibrated_bytes(size: ModelSize, c: Choices) -> int:
    """The checkpoint calibrate writes (the converted one itself for method none)."""
    dtype = BYTES[c.convert_dtype]
    if c.method == "none":
        return size.params * dtype
    linear = size.params - size.embed_params
    bits = WEIGHT_BITS.get(c.method, 8)
    return int(linear * bits / 8 * _SCALE_SHARE) + size.embed_params * dtype


def _calibration_memory(size: ModelSize, c: Choices, out: Needs) -> None:
    activations = 2 * c.calib_tokens * size.hidden * 4
    dtype = BYTES[c.calib_dtype]
    if c.calib_mode == "layerwise":
        layer = (size.params - size.embed_params) // max(size.layers, 1) * 4
        held = size.embed_params * dtype + 2 * layer + min(activations, 2 * LAYERWISE_STREAM_BOUND)
        model, host_model = held, held
    else:
        model, host_model = size.params * dtype + activations, size.params * dtype
    if c.calib_device == "cpu":
        out.host["calibrate"] = PROCESS_BASE + model
    else:  # cuda, or auto on a GPU machine: the model passes through the host to the GPU
        out.host["calibrate"] = PROCESS_BASE + host_model
        out.device["calibrate"] = model


def _build_needs(size: ModelSize, c: Choices, calibrated: int, stream: int, out: Needs) -> None:
    if c.tp * c.pp > 1:
        out.disk["shard"] = calibrated
    out.host["build"] = stream + size.largest * 4  # a tensor and its transposed copy
    if c.backend == "onnxruntime" and c.profile == "portable" and not c.calibrates:
        out.disk["build"] = size.written_params * BYTES[c.convert_dtype]
    elif c.backend == "tensorrt":
        out.disk["build"] = 2 * calibrated
        out.host["build"] = PROCESS_BASE + 2 * calibrated
        out.device["build"] = calibrated
    else:
        out.disk["build"] = calibrated


@dataclass(frozen=True)
class Budget:
    """What the machine offers (None: unknown), each capped by its environment variable."""

    disk: int | None
    host: int | None
    device: int | None
    disk_path: Path
    capped: tuple[str, ...] = ()  # which came from a cap

    @classmethod
    def measure(cls, home: Path, *, gpu: bool) -> Budget:
        machine = {"disk": _free_disk(home), "host": _mem_available(), "device": None}
        if gpu:
            machine["device"] = _gpu_free()
        capped = []
        for kind, var in CAPS.items():
            cap = parse_size(var, os.environ.get(var))
            if cap is not None and (machine[kind] is None or cap < int(machine[kind] or 0)):
                machine[kind] = cap
                capped.append(kind)
        return cls(machine["disk"], machine["host"], machine["device"], home, tuple(capped))


def parse_size(var: str, text: str | None) -> int | None:
    """``500M``, ``8G``, ``1.5GB``, ``2GiB`` or a byte count; a bad value is exit 2."""
    if text is None or not text.strip():
        return None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ForgeError(
            ExitCode.RECIPE,
            f"{var}={text!r} is not a size",
            hint=f"set {var} to bytes or a size such as 500M or 8G, or unset it",
        )
    number, unit, binary = match.groups()
    base = 1024 if binary.lower().startswith("i") else 1000
    return int(float(number) * base ** "bkmgt".index((unit or "b").lower()))


def _free_disk(home: Path) -> int | None:
    path = Path(home)
    while not path.exists() and path != path.parent:
        path = path.parent  # FORGE_HOME not created yet: the disk it will be on
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gpu_free() -> int | None:
    """Free memory of GPU 0, asked of torch (only when a stage will use a GPU: importing
    torch costs seconds, and `forge plan` stays fast otherwise)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(0)[0])
    except Exception:  # noqa: BLE001 - a broken CUDA setup is no estimate, not a crash
        return None


def uses_gpu(c: Choices) -> bool:
    return (
        (c.calibrates and c.calib_device != "cpu")
        or c.verify_device == "cuda"
        or (c.backend in ("tensorrt", "trtllm"))
    )


@dataclass(frozen=True)
class Estimate:
    size: ModelSize | None
    needs: Needs
    budget: Budget
    choices: Choices

    def problems(self) -> list[str]:
        return _problems(self.needs, self.budget)

    def to_json(self) -> dict[str, Any]:
        rows = {}
        for kind in ("disk", "host", "device"):
            peak, stage = self.needs.peak(kind)
            rows[kind] = {
                "bytes": peak,
                "stage": stage,
                "per_stage": dict(getattr(self.needs, kind)),
                "available": getattr(self.budget, kind),
                "capped": kind in self.budget.capped,
            }
        return {
            "model": None if self.size is None else vars(self.size),
            "needs": rows,
            "fits": not self.problems(),
        }


def _problems(n: Needs, budget: Budget) -> list[str]:
    out = []
    for kind, what in (
        ("disk", f"of disk under {budget.disk_path}"),
        ("host", "of host memory"),
        ("device", "of GPU memory"),
    ):
        peak, stage = n.peak(kind)
        have = getattr(budget, kind)
        if have is None or peak <= have:
            continue
        where = f" ({_per_stage(getattr(n, kind))})" if kind == "disk" else f" at {stage}"
        source = " (capped by " + CAPS[kind] + ")" if kind in budget.capped else ""
        out.append(f"about {peak / GB:.2f} GB {what}{where}, {have / GB:.2f} GB available{source}")
    return out


def _per_stage(table: dict[str, int]) -> str:
    return ", ".join(f"{s} {b / GB:.2f}" for s, b in table.items() if b)


# One-field changes that shrink a need, in the order a user would rather accept them.
_FIXES: tuple[tuple[str, str, Any], ...] = (
    ("quantize.calibration.mode: layerwise", "calib_mode", "layerwise"),
    ("quantize.calibration.dtype: bfloat16", "calib_dtype", "bfloat16"),
    ("quantize.calibration.device: cpu", "calib_device", "cpu"),
    ("convert.dtype: bfloat16", "convert_dtype", "bfloat16"),
    ("verify.enabled: false", "verify", False),
)


def fixes(est: Estimate, stages: list[str], *, layerwise_ok: bool) -> list[str]:
    """Recipe changes under which every need fits the budget: each single change that
    does, else the fewest of them that do together (greedy, then pruned)."""
    if est.size is None:
        return []
    size, budget = est.size, est.budget
    candidates = [
        (label, {name: value})
        for label, name, value in _FIXES
        if getattr(est.choices, name) != value and (name != "calib_mode" or layerwise_ok)
    ]

    def fits(chosen: list[tuple[str, dict[str, Any]]]) -> bool:
        changes = {k: v for _, change in chosen for k, v in change.items()}
        return not _problems(needs(size, replace(est.choices, **changes), stages), budget)

    single = [label for label, change in candidates if fits([(label, change)])]
    if single or not fits(candidates):
        return single
    chosen = list(candidates)
    for fix in reversed(candidates):  # drop the least wanted first, while the rest fit
        if fits([f for f in chosen if f is not fix]):
            chosen.remove(fix)
    return [" and ".join(label for label, _ in chosen)]


def refusal(est: Estimate, stages: list[str], *, layerwise_ok: bool) -> ForgeError | None:
    """Exit 4 naming the numbers and what would fit, or None when the build fits."""
    problems = est.problems()
    if not problems:
        return None
    settings = fixes(est, stages, layerwise_ok=layerwise_ok)
    if settings:
        hint = "this would fit: " + " or ".join(settings)
    elif any("of disk" in p for p in problems):
        hint = "free disk there, or point FORGE_HOME at a larger disk"
    else:
        hint = "free memory (other processes), or build on a machine with more"
    return dependency_error(
        "this build will not fit on this machine: needs " + "; ".join(problems), hint=hint
    )
