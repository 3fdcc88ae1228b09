"""The pre-flight estimate of `forge plan`: the model's size from what this machine
already holds (a local folder, a fetched snapshot, a GGUF header) and the stages the plan
will run, against the machine (pipeline/estimate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtllm_forge.context import RunContext
from trtllm_forge.pipeline.estimate import (
    Budget,
    Choices,
    Estimate,
    ModelSize,
    Needs,
    needs,
    refusal,
    safetensors_tensors,
    size_from_tensors,
    uses_gpu,
)
from trtllm_forge.pipeline.runner import StageResult
from trtllm_forge.recipe.load import LoadedRecipe, load_recipe

RUNS = ("miss", "pending")


def plan_estimate(
    *, recipe: str | Path, results: Sequence[StageResult], ctx: RunContext | None = None
) -> Estimate:
    """What the stages the plan will run (``results``, from ``api.plan`` of the same
    recipe, which validated it) need, and what this machine has.

    Raises the exit-4 refusal (numbers, and the recipe changes that would fit) when a
    need exceeds its budget. The model's size is unknown when no header of it is on
    this machine (a hub model outside the HF cache, pickle-only weights): then nothing
    is refused.
    """
    loaded = load_recipe(recipe)
    settings = (ctx or RunContext.default()).settings
    choices = Choices.of(loaded.recipe)
    stages = [r.stage for r in results if r.status in RUNS]
    size, config = model_size(loaded, results, settings.home)
    budget = Budget.measure(settings.home, gpu=bool(stages) and uses_gpu(choices))
    if choices.calib_device == "auto":  # what calibration will pick here
        choices = replace(choices, calib_device="cpu" if budget.device is None else "cuda")
    est = Estimate(size, needs(size, choices, stages) if size else Needs(), budget, choices)
    problem = refusal(est, stages, layerwise_ok=_layerwise_ok(loaded, config))
    if problem is not None:
        raise problem
    return est


Sized = tuple[ModelSize | None, dict[str, Any] | None]


def model_size(loaded: LoadedRecipe, results: Sequence[StageResult], home: Path) -> Sized:
    """The model's size and config.json: from the fetched snapshot when fetch is cached,
    else the recipe's local folder, GGUF header or the hub model's HF cache snapshot;
    (None, None) when none is on this machine."""
    source = loaded.recipe.source
    fetched = next((r for r in results if r.stage == "fetch" and r.status == "hit"), None)
    if fetched is not None and fetched.key is not None:
        folder = _snapshot(home, fetched.key)
        if folder is not None:
            return _folder_size(folder)
    if source.path is not None:
        from trtllm_forge.sources.local import resolve_local

        root = loaded.resolve_path(source.path, "source.path")
        return _folder_size(resolve_local(root, allow_pickle=source.allow_pickle).root)
    if source.gguf is not None:
        return _gguf_size(loaded), None
    if source.hf is None:
        return None, None
    folder = _hub_snapshot(source.hf, source.revision)
    return _folder_size(folder) if folder is not None else (None, None)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The repo's snapshot in the HF cache (the plan's fetch key resolved it there), by
    the cache's layout (sources/hf.py): ``refs/<revision>`` names the commit whose
    ``snapshots/<sha>`` holds the files. None when it is not there."""
    from trtllm_forge.sources.hf import hub_cache_dir

    storage = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    ref = storage / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _snapshot(home: Path, key: str) -> Path | None:
    from trtllm_forge.stages.fetch import snapshot_dir
    from trtllm_forge.store.store import Artifact, Store

    found = Store(home).lookup("fetch", key)
    return snapshot_dir(found) if isinstance(found, Artifact) else None


def _folder_size(folder: Path) -> Sized:
    import json

    tensors = safetensors_tensors(folder)
    config_file = folder / "config.json"
    if not tensors or not config_file.is_file():
        return None, None  # pickled weights only: their sizes are not in a header
    config = json.loads(config_file.read_text())
    return size_from_tensors(tensors, config), config


def _gguf_size(loaded: LoadedRecipe) -> ModelSize:
    from trtllm_forge.pipeline.preflight import named_file
    from trtllm_forge.sources.gguf_header import read_header

    path = named_file(loaded, "source.gguf")
    assert path is not None
    header = read_header(path)
    arch = header.architecture or ""
    meta: dict[str, Any] = header.metadata
    config = {
        "num_hidden_layers": meta.get(f"{arch}.block_count") or 1,
        "hidden_size": meta.get(f"{arch}.embedding_length") or 0,
    }
    tensors = {t.name: (t.shape, t.nbytes) for t in header.tensors}
    return size_from_tensors(tensors, config)


def _layerwise_ok(loaded: LoadedRecipe, config: dict[str, Any] | None) -> bool:
    """Whether ``quantize.calibration.mode: layerwise`` may be offered as a fix: the
    schema has it and the layer walk takes this method (quant/layerwise_support.py)."""
    from trtllm_forge.quant.layerwise_support import refusal as layerwise_refusal
    from trtllm_forge.recipe.schema import Calibration

    if config is None or "mode" not in Calibration.model_fields:
        return False
    quant = loaded.recipe.quantize
    return (
        layerwise_refusal(quant.method, quant.model_dump(mode="json"), quant.kv_cache, config)
        is None
    )
