"""Checks that run before any work: things knowable from the recipe alone
(backend availability, plugins) and, once the source config is known, the
model-dependent cross-checks (tp vs heads, pp vs layers)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trtllm_forge import rules
from trtllm_forge.errors import ForgeError, recipe_error
from trtllm_forge.recipe.load import LoadedRecipe, load_recipe

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
    _check_layerwise(loaded, None)
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


def refuse_trtllm_layout(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """A family whose checkpoint layout trtllm-build does not read (MoE experts)."""
    from trtllm_forge.models.registry import family_for

    reason = family_for(hf_config).trtllm_build_refusal(hf_config)
    if reason:
        raise recipe_error(
            reason,
            hint="build it with build.backend: onnxruntime or tensorrt",
            location=loaded.locate(f"source.{_source_field(loaded)}"),
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
        error.location = error.location or loaded.locate(f"source.{_source_field(loaded)}")
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


def check_model(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """Cross-check parallel sizes against the model before converting anything."""
    from trtllm_forge.models.base import model_dims

    recipe = loaded.recipe
    _check_architecture(loaded, hf_config)
    if recipe.build.backend == "trtllm":
        refuse_trtllm_layout(loaded, hf_config)
    dims = model_dims(hf_config)  # also rejects absurd sizes before anything is allocated
    dims |= _expert_sizes(hf_config)
    layers = dims["num_hidden_layers"]
    tp, pp = recipe.parallel.tp, recipe.parallel.pp
    misfit = _tp_misfit(tp, dims)
    if misfit:
        raise recipe_error(
            misfit.for_recipe(),
            hint=f"choose tp from {_valid_tps(dims)}",  # only values that pass every rule
            location=loaded.locate("parallel.tp"),
        )
    misfit = rules.pp_misfit(pp, layers=layers) if layers else None
    if misfit:
        raise recipe_error(
            misfit.for_recipe(),
            hint=f"use pp ≤ {layers}",
            location=loaded.locate("parallel.pp"),
        )
    _check_group_alignment(loaded, dims, hf_config)
    _check_block_alignment(loaded, dims, hf_config)
    _check_kv_blocks(loaded, dims)
    _check_smoothing_fold(loaded, hf_config)
    _check_quantizable(loaded, hf_config)
    _check_layerwise(loaded, hf_config)
    _check_profile_model(loaded, hf_config)
    _check_hf_target(loaded, hf_config)


def _check_hf_target(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """What a Hugging Face folder cannot hold for this model: quantized GPT-2 ``Conv1D``
    layers (both formats quantize ``nn.Linear`` modules only), and KV-cache scales when
    q/k/v is one fused projection (the scales live on separate k and v projections)."""
    recipe = loaded.recipe
    if recipe.build.backend != "hf":
        return
    from trtllm_forge.models.registry import family_for
    from trtllm_forge.quant.targets import linear_targets

    if family_for(hf_config).native:  # Baichuan 2, ChatGLM: forge's own model only
        raise recipe_error(
            f"transformers has no class for {hf_config['architectures'][0]}, so a Hugging "
            "Face folder of it loads (and verifies) only with its repository's code",
            hint="use build.backend: onnxruntime for this model",
            location=loaded.locate("build.backend"),
        )
    for target in linear_targets(hf_config):
        if recipe.quantize.method != "none" and ".experts." in f".{target.kind}":
            raise recipe_error(  # transformers 5 loads experts fused: nothing to attach to
                f"{target.sources[0]} is one expert of a mixture-of-experts layer: the Hugging "
                "Face formats forge writes quantize one linear per HF module, and transformers "
                "loads this model's experts as fused 3-D parameters",
                hint="use build.backend: onnxruntime for this model's quantized weights",
                location=loaded.locate("quantize.method"),
            )
        if recipe.quantize.method != "none" and target.rule and target.rule.fusion == "transpose":
            raise recipe_error(
                f"{target.sources[0]} is a Conv1D layer, not nn.Linear: neither Hugging Face "
                "format quantizes it",
                hint="use build.backend: onnxruntime for this model's quantized weights",
                location=loaded.locate("quantize.method"),
            )
        if recipe.quantize.method != "none" and target.rule and target.rule.fusion == "row_block":
            raise recipe_error(  # Phi-3's gate_up_proj: one HF linear holds mlp.fc and mlp.gate
                f"{target.sources[0]} holds two forge linears (its rows are split at "
                "conversion); the Hugging Face writers quantize one linear per HF module",
                hint="use build.backend: onnxruntime for this model's quantized weights",
                location=loaded.locate("quantize.method"),
            )
        if recipe.quantize.kv_cache != "none" and target.kind == "attention.qkv":
            if len(target.sources) != 3:
                raise recipe_error(
                    f"a quantized KV cache in a Hugging Face folder needs separate k/v "
                    f"projections; {target.sources[0]} fuses q, k and v",
                    hint="use build.backend: onnxruntime for this model's quantized KV cache",
                    location=loaded.locate("quantize.kv_cache"),
                )


def _tp_misfit(tp: int, dims: dict[str, int]) -> rules.Misfit | None:
    """What tensor parallelism of ``tp`` cannot split in this model (rules.py)."""
    return rules.tp_misfit(tp, **_split_sizes(dims))


def _split_sizes(dims: dict[str, int]) -> dict[str, Any]:
    """The sizes tp splits: heads, and each MLP width (TP splits each expert like a dense MLP)."""
    widths = {"intermediate_size": dims["intermediate_size"]}
    widths.update({name: dims[name] for name in _EXPERT_SIZES if name in dims})
    heads, kv_heads = dims["num_attention_heads"], dims["num_key_value_heads"]
    return {"heads": heads, "kv_heads": kv_heads, "widths": widths}


# Qwen MoE experts' own widths (config.json's intermediate_size is a dense MLP's).
_EXPERT_SIZES = ("moe_intermediate_size", "shared_expert_intermediate_size")


def _expert_sizes(hf_config: dict[str, Any]) -> dict[str, int]:
    from trtllm_forge.models.base import text_config

    cfg = text_config(hf_config)
    return {name: int(cfg[name]) for name in _EXPERT_SIZES if cfg.get(name)}


def _valid_tps(dims: dict[str, int]) -> list[int]:
    """The tp values the hint may offer: those no rule above refuses (tp=4 on 14 heads
    used to offer 7, which the key/value-head rule then refused)."""
    return rules.valid_tps(**_split_sizes(dims))


def _check_quantizable(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """A family that cannot calibrate this checkpoint says so before any work."""
    quantize = loaded.recipe.quantize
    if quantize.method == "none" and quantize.kv_cache == "none":
        return
    from trtllm_forge.models.registry import family_for

    reason = family_for(hf_config).quantization_refusal(hf_config)
    if reason:
        raise recipe_error(
            reason,
            hint="build it unquantized (quantize.method: none, quantize.kv_cache: none)",
            location=loaded.locate("quantize.method"),
        )


def _check_layerwise(loaded: LoadedRecipe, hf_config: dict[str, Any] | None) -> None:
    """What layer-wise calibration cannot walk yet is refused, never calibrated whole."""
    quantize = loaded.recipe.quantize
    if quantize.calibration.mode != "layerwise":
        return
    from trtllm_forge.quant.layerwise_support import refusal

    params = quantize.model_dump(mode="json")
    reason = refusal(quantize.method, params, quantize.kv_cache, hf_config)
    if reason:
        raise recipe_error(
            reason,
            hint="use quantize.calibration.mode: whole (it calibrates every method and family)",
            location=loaded.locate("quantize.calibration.mode"),
        )


def _check_profile_model(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    if loaded.recipe.build.profile != "ort":
        return
    from trtllm_forge.engine.onnx.ort.support import model_refusal

    reason = model_refusal(hf_config, loaded.recipe.quantize.method)
    if reason:
        raise recipe_error(
            reason,
            hint="use build.profile: portable, which lowers every supported family",
            location=loaded.locate("build.profile"),
        )


def _check_architecture(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """A model forge cannot convert is refused from its config.json, before the weights
    are downloaded or converted (a Gemma 3 used to be fetched and converted first)."""
    from trtllm_forge.models.registry import check_model_type, family_for

    try:
        family_for(hf_config)
        check_model_type(hf_config)
    except ForgeError as error:
        error.location = error.location or loaded.locate(f"source.{_source_field(loaded)}")
        raise


def _source_field(loaded: LoadedRecipe) -> str:
    source = loaded.recipe.source
    return next((f for f in ("hf", "path", "gguf") if getattr(source, f) is not None), "path")


def _check_smoothing_fold(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """Per-token SmoothQuant needs a norm of its own before each column linear."""
    quantize = loaded.recipe.quantize
    if getattr(quantize, "activations", None) != "per_token":
        return
    from trtllm_forge.errors import ForgeError
    from trtllm_forge.quant.targets import check_smoothing_fold

    try:
        check_smoothing_fold(hf_config)
    except ForgeError as error:
        error.location = loaded.locate("quantize.activations")
        raise


def _check_group_alignment(
    loaded: LoadedRecipe, dims: dict[str, int], hf_config: dict[str, Any]
) -> None:
    """Int4 groups run along a linear layer's input. Row-parallel layers (attention
    output, MLP down-projection) split that input across tp ranks, so each rank's
    share must hold whole groups; the sharder refuses otherwise — say so before an
    expensive calibration instead. Only the linears left after ``quantize.exclude``
    count: excluding the misfits is the documented way out."""
    quantize = loaded.recipe.quantize
    group = getattr(quantize, "group_size", None)
    if group is None:
        return
    from trtllm_forge.checkpoint.layout import module_dims, parse_name
    from trtllm_forge.errors import ForgeError
    from trtllm_forge.quant.targets import linear_dims, plan_targets

    tp = loaded.recipe.parallel.tp
    sizes = linear_dims(hf_config)  # MoE experts: their own intermediate size
    try:
        plan = plan_targets(hf_config, list(quantize.exclude))
    except ForgeError as error:  # a pattern matching nothing: point at the list
        error.location = error.location or loaded.locate("quantize.exclude")
        raise
    kinds = list(dict.fromkeys(t.kind for t in plan.quantized))

    def misfit(tp: int) -> tuple[str, int, int] | None:
        """The first quantized linear whose per-rank input holds no whole groups."""
        for kind in kinds:
            width = module_dims(kind, sizes)[1]
            parsed = parse_name(f"transformer.layers.0.{kind}.weight")
            split = tp if parsed is not None and parsed.parallel == "row" else 1
            if (width // split) % group:
                return kind, width, split
        return None

    found = misfit(tp)
    if found is None:
        return
    kind, width, split = found
    share = f"with tp={tp}, each rank's share of {kind}'s input is {width // split}"
    fitting = [t for t in _valid_tps(dims) if misfit(t) is None]
    raise recipe_error(
        (share if split > 1 else f"{kind}'s input is {width}")
        + f", not a multiple of group_size {group}",
        hint="lower quantize.group_size"
        + (f" or choose tp from {fitting}" if split > 1 and fitting else "")
        + f", or exclude it (quantize.exclude: ['*{kind}']); a new group_size or exclude "
        "recalibrates, while a new tp alone reuses the calibration",
        location=loaded.locate("quantize.group_size"),
    )


def _check_kv_blocks(loaded: LoadedRecipe, dims: dict[str, int]) -> None:
    """An NVFP4 KV cache holds each head's keys and values in blocks of 16 channels."""
    if loaded.recipe.quantize.kv_cache != "nvfp4":
        return
    head = int(dims.get("head_size") or dims["hidden_size"] // dims["num_attention_heads"])
    if head % 16:
        raise recipe_error(
            f"an NVFP4 KV cache quantizes each head in blocks of 16 channels; this model's "
            f"head size is {head}",
            hint="use kv_cache: fp8",
            location=loaded.locate("quantize.kv_cache"),
        )


def _check_block_alignment(
    loaded: LoadedRecipe, dims: dict[str, int], hf_config: dict[str, Any]
) -> None:
    """FP8 block scales tile each quantized linear's per-rank weight (q, k and v apart) in
    block_size × block_size squares: every side must be whole tiles."""
    quantize = loaded.recipe.quantize
    block = getattr(quantize, "block_size", None)
    if block is None:
        return
    from trtllm_forge.checkpoint.layout import module_dims, parse_name
    from trtllm_forge.quant.targets import linear_dims, plan_targets

    tp = loaded.recipe.parallel.tp
    sizes = linear_dims(hf_config)  # MoE experts: their own intermediate size
    head = int(dims.get("head_size") or dims["hidden_size"] // dims["num_attention_heads"])
    kv_heads = int(dims.get("num_key_value_heads") or dims["num_attention_heads"])
    for kind in dict.fromkeys(
        t.kind for t in plan_targets(hf_config, list(quantize.exclude)).quantized
    ):
        out, width = module_dims(kind, sizes)
        parsed = parse_name(f"transformer.layers.0.{kind}.weight")
        row = parsed is not None and parsed.parallel == "row"
        outs = [out // (1 if row else tp)]
        if kind == "attention.qkv":  # q, k and v are tiled apart
            outs = [dims["num_attention_heads"] * head // tp, max(kv_heads // tp, 1) * head]
        sides = [*outs, width // (tp if row else 1)]
        if any(side % block for side in sides):
            raise recipe_error(
                f"{kind}'s per-rank weight sides {sides} (tp={tp}) are not whole "
                f"{block}×{block} FP8 blocks",
                hint="lower quantize.block_size, change parallel.tp, or exclude the layer",
                location=loaded.locate("quantize.block_size"),
            )
