"""Checks that run before any work: things knowable from the recipe alone (plugins,
profile, formats, the files it names) and, for a model on this machine, the checks
against the model's config.json (pipeline/model_checks.py: tp vs heads, pp vs layers…)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ForgeError, recipe_error
from trtllm_forge.pipeline.model_checks import (
    check_layerwise,
    check_model,
    refuse_trtllm_layout,
    source_field,
)
from trtllm_forge.recipe.load import LoadedRecipe, load_recipe

# check_model and refuse_trtllm_layout (pipeline/model_checks.py) are exported here too:
# preflight is where every check made before any stage runs is found.
__all__ = [
    "NAMED_FILES",
    "WEIGHT_ONLY_METHODS",
    "check_model",
    "check_sources",
    "check_static",
    "check_tokenizer",
    "check_trtllm_export",
    "load_checked",
    "named_file",
    "refuse_trtllm_layout",
]


# Every file a recipe names, with how to talk about it: checked here before any stage
# runs (a /dev/zero text file used to surface only at verify, after the engine build)
# and resolved through the same entry by the stage that reads it.
NAMED_FILES: dict[str, tuple[str, str]] = {
    "source.gguf": ("GGUF file", "check source.gguf (relative to the recipe)"),
    "quantize.calibration.file": (
        "calibration file",
        "quantize.calibration.file is relative to the recipe",
    ),
    "verify.text_file": (
        "verify text file",
        "verify.text_file names a text file, relative to the recipe",
    ),
}


def load_checked(recipe: str | Path, *, sources: bool = True) -> LoadedRecipe:
    """Load and validate a recipe (schema + static cross-checks), and unless ``sources``
    is false, the files and local model it names (check_sources)."""
    loaded = load_recipe(recipe)
    check_static(loaded)
    if sources:
        check_sources(loaded)
    return loaded


def named_file(loaded: LoadedRecipe, field: str) -> Path | None:
    """The regular file the recipe names at ``field`` (None when unset), or a located
    source error for a missing, non-regular, pseudo or unreadable one."""
    value: Any = loaded.recipe
    for part in field.split("."):
        value = getattr(value, part, None)
    if value is None:
        return None
    what, hint = NAMED_FILES[field]
    return loaded.regular_file(str(value), field, what=what, hint=hint)


def check_static(loaded: LoadedRecipe) -> None:
    recipe = loaded.recipe
    for message in _plugin_problems(recipe.build.backend, dict(recipe.build.plugins)):
        raise recipe_error(
            message,
            hint="see docs/recipes.md#build for the plugins each backend takes",
            location=loaded.locate("build.plugins"),
        )
    if (
        recipe.quantize.method == "none"
        and recipe.quantize.kv_cache == "none"
        and "calibration" in (loaded.data.get("quantize") or {})
    ):
        raise recipe_error(
            "calibration is set but nothing is quantized",
            hint="set quantize.method or quantize.kv_cache, or remove calibration",
            location=loaded.locate("quantize.calibration"),
        )
    _check_profile(loaded)
    check_layerwise(loaded, None)
    if recipe.quantize.method != "none" or recipe.quantize.kv_cache != "none":
        # Every target carries unquantized weights: no need to import quant/records.py.
        _check_hf_format(loaded)
        _check_engine_format(loaded)


def check_sources(loaded: LoadedRecipe) -> None:
    """What the recipe points at: every file it names is a regular file, and a model on
    this machine is one forge can convert with these settings. Run by `recipe check`,
    `plan` and `build` after check_static, before any stage (a /dev/zero text file was
    found at verify, after the engine build; a Gemma 3 after two minutes of fetch)."""
    for field in NAMED_FILES:
        named_file(loaded, field)
    _check_local_source(loaded)


def _check_hf_format(loaded: LoadedRecipe) -> None:
    """A quantization the chosen Hugging Face format cannot carry: refused before any work."""
    build = loaded.recipe.build
    if build.backend != "hf" or build.format is None:
        return
    from trtllm_forge.quant import records

    quant = loaded.recipe.quantize
    fmt = records.format_name(quant.method, quant.model_dump(mode="json"))
    kv = None if quant.kv_cache == "none" else quant.kv_cache
    reason = records.why_not(build.format, fmt, kv)
    if reason:
        able = records.carriers(fmt, kv)
        raise recipe_error(
            f"build.format {build.format} cannot carry this quantization: {reason}",
            hint=f"formats that can: {', '.join(able)}"
            if able
            else "no Hugging Face format carries it; use build.backend: onnxruntime",
            location=loaded.locate("build.format"),
        )


def _refuse_for_trtllm_build(loaded: LoadedRecipe) -> None:
    """A format TensorRT-LLM ≤ 1.2's trtllm-build does not take (its record says why)."""
    from trtllm_forge.quant import records

    quant = loaded.recipe.quantize
    fmt = records.format_name(quant.method, quant.model_dump(mode="json"))
    reason = records.why_not_trtllm_build(fmt)
    if reason:
        able = records.carriers(fmt, None if quant.kv_cache == "none" else quant.kv_cache)
        raise recipe_error(
            f"trtllm-build cannot take this quantization: {reason}",
            hint="use build.backend: hf with build.format: " + " or ".join(able)
            if able
            else "use build.backend: onnxruntime",
            location=loaded.locate("quantize.method"),
        )


def _check_engine_format(loaded: LoadedRecipe) -> None:
    """A format no ONNX graph runs exactly (its record says why): refused for the
    ONNX-based backends before any work, naming the targets that carry it."""
    if loaded.recipe.build.backend == "trtllm":
        _refuse_for_trtllm_build(loaded)
    if loaded.recipe.build.backend not in ("onnxruntime", "tensorrt"):
        return
    from trtllm_forge.quant import records

    quant = loaded.recipe.quantize
    fmt = records.format_name(quant.method, quant.model_dump(mode="json"))
    kv = None if quant.kv_cache == "none" else quant.kv_cache
    reason = records.why_not_onnx(fmt, kv)
    if reason:
        able = records.carriers(fmt, kv)
        raise recipe_error(
            f"build.backend {loaded.recipe.build.backend} cannot run this quantization: {reason}",
            hint="use build.backend: hf with build.format: " + " or ".join(able)
            if able
            else "no target carries it",
            location=loaded.locate("quantize.method"),
        )


def _check_profile(loaded: LoadedRecipe) -> None:
    """build.profile ort lowers a subset of what portable does: refuse the rest now."""
    if loaded.recipe.build.profile != "ort":
        recipe = loaded.recipe
        for field, value in (
            ("build.int8_activations", True),
            ("build.compute_dtype", "float16"),
            # Only the ort lowering runs a quantized head (MatMulNBits); the portable graph,
            # TensorRT-LLM and the Hugging Face formats expect it in the checkpoint dtype.
            ("quantize.quantize_lm_head", True),
        ):
            section, name = field.split(".")
            if getattr(getattr(recipe, section), name, None) == value:
                raise recipe_error(
                    f"{field} applies to the ort profile only",
                    hint=f"set build.profile: ort, or remove {field}",
                    location=loaded.locate(field),
                )
        return
    from trtllm_forge.engine.onnx.ort.support import recipe_refusals

    for refusal in recipe_refusals(loaded.recipe):
        raise recipe_error(
            refusal.message, hint=refusal.hint, location=loaded.locate(refusal.field)
        )


# quantize.method values whose TensorRT-LLM checkpoint is weight-only (W8A16, W4A16_*).
WEIGHT_ONLY_METHODS = ("int8_wo", "int4_wo", "awq", "gptq")


def check_trtllm_export(loaded: LoadedRecipe) -> None:
    """trtllm-build's weight-only GEMM kernels take float16 or bfloat16 activations: a
    float32 checkpoint with W4A16_AWQ was exported without a word and failed there."""
    recipe = loaded.recipe
    _refuse_for_trtllm_build(loaded)
    if recipe.source.path is not None:  # a hub model's config is read by fetch, later
        from trtllm_forge.sources.policy import read_config

        root = loaded.resolve_path(recipe.source.path, "source.path")
        refuse_trtllm_layout(loaded, read_config(root))
    if recipe.quantize.method in WEIGHT_ONLY_METHODS and recipe.convert.dtype == "float32":
        raise recipe_error(
            f"trtllm-build runs {recipe.quantize.method} (weight-only) with float16 or bfloat16 "
            "activations, not convert.dtype float32",
            hint="set convert.dtype: float16 or bfloat16 for `forge export trtllm-ckpt` "
            "(convert and calibration rerun for the new dtype)",
            location=loaded.locate("convert.dtype"),
        )


def _check_local_source(loaded: LoadedRecipe) -> None:
    """A local folder or GGUF file is checked here; a hub model from its config.json
    before its weights download, in fetch."""
    source = loaded.recipe.source
    if source.gguf is not None:
        from trtllm_forge.sources.gguf_header import hf_architecture, read_header

        path = named_file(loaded, "source.gguf")
        assert path is not None
        try:
            hf_architecture(read_header(path), path)
        except ForgeError as error:
            error.location = error.location or loaded.locate("source.gguf")
            raise
    elif source.path is not None:
        from trtllm_forge.sources.local import resolve_local
        from trtllm_forge.sources.policy import read_config

        root = loaded.resolve_path(source.path, "source.path")
        try:  # the folder's own rules first (pickle, remote code), as fetch orders them
            snapshot = resolve_local(root, allow_pickle=source.allow_pickle)
        except ForgeError as error:
            error.location = error.location or loaded.locate("source.path")
            raise
        check_model(loaded, read_config(snapshot.root))
        check_tokenizer(loaded, snapshot.root, snapshot.files)


def check_tokenizer(loaded: LoadedRecipe, root: Path, names: Iterable[str]) -> None:
    """The model folder's tokenizer files are readable, and present when a stage will
    tokenize (a corrupt tokenizer.json was found at verify, after convert and build)."""
    from trtllm_forge.sources.tokenizer import check_tokenizer_files

    try:
        check_tokenizer_files(root, names, needed_for=_tokenizer_use(loaded))
    except ForgeError as error:
        error.location = error.location or loaded.locate(f"source.{source_field(loaded)}")
        raise


def _tokenizer_use(loaded: LoadedRecipe) -> str | None:
    """What will tokenize with the model's tokenizer, or None when nothing will."""
    recipe = loaded.recipe
    if recipe.verify.enabled:
        return "verify tokenizes the prompts"
    if recipe.quantize.kv_cache != "none":
        return "calibration tokenizes text"
    from trtllm_forge.quant.registry import get

    if get(recipe.quantize.method).needs_data:
        return "calibration tokenizes text"
    return None


def _plugin_problems(backend: str, plugins: dict[str, Any]) -> list[str]:
    if backend == "hf":  # a Hugging Face folder, not an engine: nothing to switch
        return [f"plugin {name!r}: the hf target takes no plugins" for name in plugins]
    from trtllm_forge.engine.backends import validate_plugins

    return list(validate_plugins(backend, plugins))
