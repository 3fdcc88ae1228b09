"""The checks of a recipe against its model, made once the model's config.json is known:
before any stage for a local source (pipeline/preflight.py), at fetch for a hub model,
at convert for any. The cross-field rules themselves are in rules.py."""

from __future__ import annotations

from typing import Any

from trtllm_forge import rules
from trtllm_forge.errors import ForgeError, recipe_error
from trtllm_forge.recipe.load import LoadedRecipe


def refuse_trtllm_layout(loaded: LoadedRecipe, hf_config: dict[str, Any]) -> None:
    """A family whose checkpoint layout trtllm-build does not read (MoE experts)."""
    from trtllm_forge.models.registry import family_for

    reason = family_for(hf_config).trtllm_build_refusal(hf_config)
    if reason:
        raise recipe_error(
            reason,
            hint="build it with build.backend: onnxruntime or tensorrt",
            location=loaded.locate(f"source.{source_field(loaded)}"),
        )


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
    check_layerwise(loaded, hf_config)
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


def check_layerwise(loaded: LoadedRecipe, hf_config: dict[str, Any] | None) -> None:
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
        error.location = error.location or loaded.locate(f"source.{source_field(loaded)}")
        raise


def source_field(loaded: LoadedRecipe) -> str:
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
