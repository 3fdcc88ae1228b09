"""engine.json: what a built engine directory holds, for the runtime and for inspect.

Every backend writes one ``engine.json`` at the root of its output directory::

    format, format_version   "trtllm-forge-engine", 1
    backend                  "onnxruntime" | "tensorrt" | "trtllm"
    model                    the checkpoint's ModelSpec fields
    mapping                  {world_size, tp_size, pp_size}
    quantization             the checkpoint's quantization block
    limits                   {max_batch_size, max_input_len, max_seq_len}
    plugins                  the plugin switches the build used
    onnx                     lowering description (opset, ranks, schedules), paths under onnx.root
    engines                  per-rank serialized engines (tensorrt / trtllm)
    provenance               tool versions and the checkpoint config digest
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from trtllm_forge.engine.spec import Checkpoint
from trtllm_forge.errors import source_error

ENGINE_FILE = "engine.json"
FORMAT = "trtllm-forge-engine"
FORMAT_VERSION = 1


def engine_metadata(
    ckpt: Checkpoint,
    *,
    backend: str,
    limits: dict[str, int],
    plugins: dict[str, Any],
    tools: tuple[str, ...],
) -> dict[str, Any]:
    """The backend-independent part of engine.json."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "model": dataclasses.asdict(ckpt.model),
        "mapping": {
            "world_size": len(ckpt.ranks),
            "tp_size": ckpt.tp_size,
            "pp_size": ckpt.pp_size,
        },
        "quantization": ckpt.model.quantization,
        "limits": dict(limits),
        "plugins": dict(plugins),
        "provenance": provenance(ckpt, tools),
    }


def provenance(ckpt: Checkpoint, tools: tuple[str, ...]) -> dict[str, Any]:
    config_bytes = (ckpt.path / "config.json").read_bytes()
    return {
        "checkpoint_config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "tools": {name: tool_version(name) for name in ("trtllm-forge", *tools)},
    }


def tool_version(distribution: str) -> str | None:
    # Imported here: importlib.metadata (email, zipfile, csv…) is a measurable part of a
    # no-op `forge build`, which imports this module but writes no engine.
    from importlib import metadata as importlib_metadata

    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return None


def write_metadata(engine_dir: Path, meta: dict[str, Any]) -> Path:
    path = Path(engine_dir) / ENGINE_FILE
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(engine_dir: Path) -> dict[str, Any]:
    path = Path(engine_dir) / ENGINE_FILE
    if not path.is_file():
        raise source_error(
            f"{engine_dir} is not a forge engine directory ({ENGINE_FILE} is missing)",
            hint="pass the output directory of the build stage",
        )
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise source_error(
            f"{path} has format {meta.get('format')!r} v{meta.get('format_version')!r}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}",
            hint="rebuild the engine with this version of forge",
        )
    return meta
