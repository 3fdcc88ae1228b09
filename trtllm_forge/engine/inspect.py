"""inspect_engine / inspect_checkpoint: JSON-ready summaries for `forge inspect`.

Both read headers and metadata only (engine.json, safetensors headers), never
weights, so they are instant on multi-GB artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.engine.metadata import ENGINE_FILE, read_metadata
from trtllm_forge.engine.spec import read_checkpoint, read_safetensors_header


def inspect_engine(engine_dir: Path) -> dict[str, Any]:
    """Backend, model, mapping, limits, quantization, per-rank files and graph I/O of an engine dir."""
    engine_dir = Path(engine_dir)
    meta = read_metadata(engine_dir)
    onnx_meta = meta.get("onnx") or {}
    root = engine_dir / onnx_meta.get("root", ".")
    ranks = []
    for entry in onnx_meta.get("ranks", []):
        rank_dir = root / entry["dir"]
        _check_weights_present(rank_dir)
        ranks.append(
            {
                "rank": entry["rank"],
                "tp_rank": entry["tp_rank"],
                "pp_rank": entry["pp_rank"],
                "layers": [entry["first_layer"], entry["first_layer"] + entry["num_layers"]],
                "files": {
                    p.name: p.stat().st_size for p in sorted(rank_dir.iterdir()) if p.is_file()
                },
                "inputs": entry["inputs"],
                "outputs": entry["outputs"],
                "segments": sum("segment" in s for s in entry["schedule"]),
                "collectives": sum("collective" in s for s in entry["schedule"]),
            }
        )
    return {
        "path": str(engine_dir),
        "backend": meta["backend"],
        "model": meta["model"],
        "mapping": meta["mapping"],
        "quantization": meta["quantization"],
        "limits": meta["limits"],
        "plugins": meta.get("plugins", {}),
        "profiles": (meta.get("tensorrt") or {}).get("profiles"),
        "onnx": {
            k: onnx_meta.get(k)
            for k in ("opset", "collective_domain", "compute_dtype", "weights_dtype")
        }
        if onnx_meta
        else None,
        "ranks": ranks,
        "engines": meta.get("engines", []),
        "total_bytes": sum(p.stat().st_size for p in engine_dir.rglob("*") if p.is_file()),
        "provenance": meta.get("provenance", {}),
        "metadata_file": ENGINE_FILE,
    }


def inspect_checkpoint(checkpoint_dir: Path) -> dict[str, Any]:
    """config.json plus, per rank file, its tensors (dtype, shape, bytes) and totals."""
    ckpt = read_checkpoint(Path(checkpoint_dir))
    ranks = []
    for layout in ckpt.ranks:
        header = read_safetensors_header(ckpt.rank_file(layout.rank))
        tensors = {
            name: {"dtype": info["dtype"], "shape": info["shape"], "bytes": _nbytes(info)}
            for name, info in sorted(header.items())
        }
        dtypes: dict[str, int] = {}
        for info in tensors.values():
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + 1
        ranks.append(
            {
                "rank": layout.rank,
                "tp_rank": layout.tp_rank,
                "pp_rank": layout.pp_rank,
                "layers": [layout.first_layer, layout.first_layer + layout.num_layers],
                "file": ckpt.rank_file(layout.rank).name,
                "file_bytes": ckpt.rank_file(layout.rank).stat().st_size,
                "tensor_count": len(tensors),
                "tensor_bytes": sum(t["bytes"] for t in tensors.values()),
                "dtypes": dtypes,
                "tensors": tensors,
            }
        )
    return {
        "path": str(ckpt.path),
        "config": ckpt.config,
        "mapping": {
            "world_size": len(ckpt.ranks),
            "tp_size": ckpt.tp_size,
            "pp_size": ckpt.pp_size,
        },
        "quantization": ckpt.model.quantization,
        "ranks": ranks,
        "total_bytes": sum(r["file_bytes"] for r in ranks),
    }


def _nbytes(info: dict[str, Any]) -> int:
    start, stop = info["data_offsets"]
    return int(stop) - int(start)


def _check_weights_present(rank_dir: Path) -> None:
    """Each graph's external weights lie inside their data file: a truncated engine used
    to be described (exit 0) as if whole. Reads graph headers only, never the weights."""
    import onnx

    from trtllm_forge.errors import source_error

    for graph_file in sorted(rank_dir.glob("*.onnx")):
        model = onnx.load(str(graph_file), load_external_data=False)
        for tensor in model.graph.initializer:
            where = {item.key: item.value for item in tensor.external_data}
            if "location" not in where:
                continue
            data = rank_dir / where["location"]
            end = int(where.get("offset", 0)) + int(where.get("length", 0))
            size = data.stat().st_size if data.is_file() else -1
            if end > size:
                raise source_error(
                    f"engine {rank_dir.parent} is damaged: {graph_file.name}'s weight "
                    f"{tensor.name!r} ends at byte {end} of {data.name}, which "
                    + ("is missing" if size < 0 else f"holds {size} bytes"),
                    hint="the engine was truncated or partly copied; rebuild or copy it again",
                )
