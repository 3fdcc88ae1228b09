"""TensorRT backend: parse the ONNX that ONNX Runtime verified, configure the builder, serialize.

Deliberately thin: TensorRT cannot be installed where forge is developed and tested
(it needs NVIDIA's package index and a GPU), so little here runs without them.
It is type-checked against ``tensorrt-stubs`` (``mypy`` on this file) and never faked
in tests. Per rank: OnnxParser → network (strongly typed for FP8) → one optimization
profile from the build limits → builder optimization level, workspace limit and a
shared timing cache → ``rank{r}.engine``. The lowered ONNX (with its ORT segments)
stays under ``onnx/`` so ``verify`` can run the very graphs TensorRT compiled.

tp > 1 is refused: the ``trtllm_forge.dist`` collective nodes need a mapping onto
TensorRT 11's DistCollective, which this backend does not do yet.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.metadata import engine_metadata, write_metadata
from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    HIDDEN_IN,
    INPUT_IDS,
    PAST_PREFIX,
    POSITION_IDS,
)
from trtllm_forge.engine.spec import ModelSpec, heads_per_rank, read_checkpoint
from trtllm_forge.errors import ExitCode, ForgeError, dependency_error, recipe_error

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-untyped,unused-ignore]

    from trtllm_forge.engine.backends.options import BuildOptions

NAME = "tensorrt"
TOOLS = ("onnx", "tensorrt")
INSTALL_HINT = (
    "install TensorRT 10.8+ from NVIDIA's index (pip install --extra-index-url "
    "https://pypi.nvidia.com tensorrt) on a machine with a CUDA GPU, or use backend onnxruntime"
)
Shape = tuple[int, ...]

_NO_PROGRESS = NullProgress()


def tensorrt_available() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else a one-line reason."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"TensorRT is not installed ({exc.msg})"
    # The tensorrt-stubs package leaves a namespace package named `tensorrt` with only
    # .pyi files: importable, but without the bindings.
    if not hasattr(module, "Builder"):
        return "TensorRT is not installed (only the `tensorrt` type stubs are present)"
    return cuda_gpu_missing()


def cuda_gpu_missing() -> str | None:
    """Ask the CUDA driver (libcuda, no torch) for a device; None when one is present."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver (libcuda.so.1 not found): TensorRT needs an NVIDIA GPU"
    if driver.cuInit(0) != 0:
        return "the CUDA driver failed to initialise (cuInit): no usable NVIDIA GPU"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA GPU found"
    return None


def unavailable_reason() -> str | None:
    return tensorrt_available()


def profile_shapes(
    inputs: Sequence[dict[str, Any]], model: ModelSpec, tp_size: int, options: BuildOptions
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """min/opt/max per graph input from the build limits (one optimization profile).

    Batch spans 1..max_batch_size; new tokens 1..max_input_len; the KV cache 0..max_seq_len-1
    past tokens, so attention_mask spans 1..max_seq_len. "opt" sits at half of each range.
    """
    batch = (1, max(1, options.max_batch_size // 2), options.max_batch_size)
    seq = (1, max(1, options.max_input_len // 2), options.max_input_len)
    past = (0, options.max_seq_len // 2, options.max_seq_len - 1)
    total = (1, options.max_seq_len // 2, options.max_seq_len)
    _, kv_heads = heads_per_rank(model, tp_size)
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for entry in inputs:
        name = str(entry["name"])
        dims: list[Shape]
        if name in (INPUT_IDS, POSITION_IDS):
            dims = [(batch[i], seq[i]) for i in range(3)]
        elif name == HIDDEN_IN:
            dims = [(batch[i], seq[i], model.hidden_size) for i in range(3)]
        elif name == ATTENTION_MASK:
            dims = [(batch[i], total[i]) for i in range(3)]
        elif name.startswith(PAST_PREFIX):
            dims = [(batch[i], kv_heads, past[i], model.head_size) for i in range(3)]
        else:
            raise ForgeError(
                ExitCode.INTERNAL, f"no optimization-profile rule for graph input {name!r}"
            )
        shapes[name] = (dims[0], dims[1], dims[2])
    return shapes


def wants_strongly_typed(model: ModelSpec, options: BuildOptions) -> bool:
    """Strongly typed networks for FP8 (as trtllm-build forces), unless the caller decides."""
    if options.strongly_typed is not None:
        return options.strongly_typed
    if model.kv_cache_quant_algo == "FP8":
        return True
    from trtllm_forge.quant import records  # the format records say which formats need it

    fmt = records.by_trtllm_algo(model.quant_algo)
    return fmt is not None and fmt.strongly_typed


def build(
    checkpoint_dir: Path, out_dir: Path, options: BuildOptions, *, progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    from trtllm_forge.engine.onnx.lower import lower_checkpoint

    ckpt = read_checkpoint(checkpoint_dir)
    if ckpt.tp_size > 1:
        raise recipe_error(
            f"the tensorrt backend builds tp=1 ranks only (this checkpoint has tp={ckpt.tp_size})",
            hint="use pp for multi-GPU TensorRT builds, or backend onnxruntime / trtllm for tp > 1",
        )
    reason = tensorrt_available()
    if reason:
        raise dependency_error(f"tensorrt backend: {reason}", hint=INSTALL_HINT)
    import tensorrt as trt  # type: ignore[import-untyped,unused-ignore]

    meta = engine_metadata(
        ckpt, backend=NAME, limits=options.limits(), plugins=dict(options.plugins), tools=TOOLS
    )
    lowered = lower_checkpoint(checkpoint_dir, out_dir / "onnx", progress=progress)
    meta["onnx"] = {"root": "onnx", **lowered}
    strongly_typed = wants_strongly_typed(ckpt.model, options)
    cache_path = options.timing_cache
    cache = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    engines, profiles = [], []
    with progress.task("building TensorRT engines", total=len(ckpt.ranks)) as task:
        for entry in lowered["ranks"]:
            shapes = profile_shapes(entry["inputs"], ckpt.model, ckpt.tp_size, options)
            onnx_path = out_dir / "onnx" / entry["model"]
            plan, cache = build_rank_engine(onnx_path, shapes, options, strongly_typed, cache)
            engine_file = f"rank{entry['rank']}.engine"
            (out_dir / engine_file).write_bytes(plan)
            engines.append({"rank": entry["rank"], "file": engine_file, "bytes": len(plan)})
            profiles.append({name: [list(s) for s in dims] for name, dims in shapes.items()})
            task.advance()
    if cache_path is not None:
        cache_path.write_bytes(cache)
    meta["engines"] = engines
    meta["tensorrt"] = {
        "version": trt.__version__,
        "strongly_typed": strongly_typed,
        "opt_level": options.opt_level,
        "workspace_gb": options.workspace_gb,
        "profiles": profiles,
    }
    write_metadata(out_dir, meta)
    progress.log(f"tensorrt engines: {len(engines)} rank(s) in {out_dir}")
    return meta


def build_rank_engine(
    onnx_path: Path,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    options: BuildOptions,
    strongly_typed: bool,
    timing_cache: bytes,
) -> tuple[bytes, bytes]:
    """Parse one rank's ONNX and build it; returns (serialized engine, updated timing cache)."""
    import tensorrt as trt  # type: ignore[import-untyped,unused-ignore]

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(builder, logger, onnx_path, strongly_typed)
    config = _configure(builder, options, shapes, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ForgeError(ExitCode.INTERNAL, f"TensorRT failed to build {onnx_path} (see its log)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def _parse(
    builder: trt.Builder, logger: trt.ILogger, onnx_path: Path, strongly_typed: bool
) -> trt.INetworkDefinition:
    import tensorrt as trt  # type: ignore[import-untyped,unused-ignore]

    flag = int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(1 << flag if strongly_typed else 0)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so the external weights next to the model are found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ForgeError(ExitCode.INTERNAL, f"TensorRT could not parse {onnx_path}: {errors}")
    return network


def _configure(
    builder: trt.Builder,
    options: BuildOptions,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    timing_cache: bytes,
) -> trt.IBuilderConfig:
    import tensorrt as trt  # type: ignore[import-untyped,unused-ignore]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(
        trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30))
    )
    config.builder_optimization_level = options.opt_level
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config
