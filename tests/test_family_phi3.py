"""Phi-3 LongRoPE (Phi-3-128k, Phi-3.5, Phi-4-mini) against transformers' Phi3ForCausalLM.

Float32 reference and engine at TP=1, 2 and PP=2, and an int8_wo checkpoint.

The tiny model rotates 8 of 16 channels with four short and four long factors that
differ, and a pretraining length (``original_max_position_embeddings``) of 20 tokens:
the 3..17-token prompts start on the short factors and cross to the long ones while
generating 32 tokens, and the 96-token scored text is long throughout. Its
``max_position_embeddings`` of 128 gives an attention factor of sqrt(1 + ln 6.4 / ln 20).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine_support import random_prompts, random_texts, rel_diff, tiny_engine
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import read_config
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import load_reference, reference_greedy, reference_logits

SHORT = [3.0, 2.0, 1.5, 1.2]
LONG = [1.5, 4.0, 9.0, 20.0]
LONGROPE = {
    "rope_parameters": {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "short_factor": SHORT,
        "long_factor": LONG,
    },
    "original_max_position_embeddings": 20,
}
PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]


@pytest.fixture(scope="module")
def longrope(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("phi3-longrope")
    build = tiny_engine(root, "phi3", **LONGROPE)
    return {"root": root, "build": build, "reference": load_reference(build.hf)}


def _reference_gap(ckpt: Path, reference: Any, length: int) -> float:
    ids = torch.randint(3, 250, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        want = reference(input_ids=ids).logits
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(ids)
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def test_longrope_config_is_converted(longrope: dict[str, Any]) -> None:
    scaling = read_config(longrope["build"].checkpoint)["rotary_scaling"]
    assert scaling["type"] == "longrope"
    assert (scaling["short_factor"], scaling["long_factor"]) == (SHORT, LONG)
    assert scaling["original_max_position_embeddings"] == 20
    want = math.sqrt(1 + math.log(128 / 20) / math.log(20))
    assert scaling["attention_factor"] == pytest.approx(want, rel=1e-12)
    assert scaling["attention_factor"] == pytest.approx(
        longrope["reference"].model.rotary_emb.attention_scaling, rel=1e-12
    )


@pytest.mark.parametrize("length", [12, 20, 21, 40])
def test_reference_forward_matches_transformers_both_sides(
    longrope: dict[str, Any], length: int
) -> None:
    """At and below 20 tokens transformers takes the short factors, above the long."""
    assert _reference_gap(longrope["build"].checkpoint, longrope["reference"], length) < 1e-5


@pytest.mark.parametrize(
    ("feature", "length"),
    [("short_factor", 16), ("long_factor", 40), ("attention_factor", 16), ("switch", 40)],
)
def test_each_longrope_part_bites(
    longrope: dict[str, Any], tmp_path: Path, feature: str, length: int
) -> None:
    """Dropping any part (a factor set set to ones, the attention factor set to 1, the
    switch moved past every length) breaks the reference's equality with transformers."""
    broken = tmp_path / "ckpt"
    shutil.copytree(longrope["build"].checkpoint, broken)
    config = read_config(broken)
    mutated = copy.deepcopy(config)
    scaling = mutated["rotary_scaling"]
    if feature == "switch":
        scaling["original_max_position_embeddings"] = 4096
    elif feature == "attention_factor":
        scaling[feature] = 1.0
    else:
        scaling[feature] = [1.0] * 4
    assert mutated != config
    (broken / "config.json").write_text(json.dumps(mutated))
    assert _reference_gap(broken, longrope["reference"], length) > 0.05


def test_engine_greedy_and_logits_match_transformers(longrope: dict[str, Any]) -> None:
    """8 left-padded prompts (short factors at prefill) × 32 new tokens (crossing to the
    long ones at position 20, over a cache rotated with the short ones, as transformers
    does) and teacher-forced logits of a short (16) and a long (96) text."""
    engine, reference = load_engine(longrope["build"].engine), longrope["reference"]
    assert engine.generate(PROMPTS, 32) == [reference_greedy(reference, p, 32) for p in PROMPTS]
    for text in (TEXT[:16], TEXT):
        assert rel_diff(reference_logits(reference, text, 128), engine.score(text)) < 1e-4


def test_engine_rows_pick_their_own_factors(longrope: dict[str, Any]) -> None:
    """A row's tokens do not depend on the rows batched with it: a 5-token prompt batched
    with a 19-token one (which crosses 20 first) generates what it generates alone."""
    engine = load_engine(longrope["build"].engine)
    short, long = PROMPTS[0][:5], (PROMPTS[1] * 4)[:19]
    together = engine.generate([short, long], 12)
    assert together == [engine.generate([short], 12)[0], engine.generate([long], 12)[0]]
    assert together[0] == reference_greedy(longrope["reference"], short, 12)


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_parallel_engine_matches_tp1(longrope: dict[str, Any], tp: int, pp: int) -> None:
    single = load_engine(longrope["build"].engine)
    parallel = load_engine(tiny_engine(longrope["root"], "phi3", tp=tp, pp=pp, **LONGROPE).engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
    assert parallel.generate(PROMPTS, 32) == single.generate(PROMPTS, 32)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


def test_int8_wo_checkpoint_verifies(longrope: dict[str, Any]) -> None:
    """Calibration runs transformers' model, fake quant forge's forward with LongRoPE:
    within the int8_wo tolerance of tests/test_quant_methods.py of the float model, and
    the engine equals fake quant, on 40 tokens (the long factors)."""
    from tests.engine_support import quantized_logits_check
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf = longrope["root"], longrope["build"].hf
    convert_hf_checkpoint(hf, root / "canonical-f16", dtype="float16")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=root / "canonical-f16",
        out_dir=root / "q_int8_wo",
        method="int8_wo",
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    ids = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(3))
    vs_float, vs_fake = quantized_logits_check(hf, root / "q_int8_wo", root / "onnx_int8", ids)
    assert 0 < vs_float < 0.05
    assert vs_fake < 1e-4


def test_forge_build_verifies_a_longrope_folder(tmp_path: Path) -> None:
    """The whole pipeline (plan, fetch, convert, build at TP=2, verify against
    transformers) with prompts short of the 20-token switch and 24 new tokens that
    cross it, and scored texts longer than it: every gate at its strictest."""
    from tests.helpers import forge, write_recipe
    from tests.tinymodels import make_tiny_hf

    folder = make_tiny_hf("phi3", tmp_path / "model", with_tokenizer=True, **LONGROPE)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(folder)},
        parallel={"tp": 2},
        build={"max_input_len": 64, "max_seq_len": 128},
        verify={
            "prompts": ["Hello", "the cat sat", "a b c d e f"],
            "max_new_tokens": 24,
            "max_text_tokens": 96,
            "gates": {"min_token_agreement": 1.0, "min_top1": 1.0},
        },
    )
    run = forge("build", str(recipe), "--json", env={"FORGE_HOME": str(tmp_path / "home")})
    assert run.code == 0, run.err
    assert run.json()["verify"]["passed"] is True


def _config(**rope: Any) -> dict[str, Any]:
    from tests.tinymodels import TINY_DEFAULTS

    config = {**TINY_DEFAULTS, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3"}
    return {**config, "partial_rotary_factor": 0.5, **rope}


def test_older_spellings_convert_alike() -> None:
    """Phi-3 configs written before transformers 5: ``rope_scaling`` with type ``su`` (or
    ``yarn``) and a top-level ``rope_theta``; Phi3Config reads both as longrope."""
    from trtllm_forge.models.phi3 import Phi3Family

    new = _config(**copy.deepcopy(LONGROPE))
    want = Phi3Family().trtllm_config(new, dtype="float32")["rotary_scaling"]
    for kind in ("su", "yarn", "longrope"):
        scaling = {"type": kind, "short_factor": SHORT, "long_factor": LONG}
        old = _config(rope_scaling=scaling, rope_theta=10000.0)
        old["original_max_position_embeddings"] = 20
        assert Phi3Family().trtllm_config(old, dtype="float32")["rotary_scaling"] == want


def _plan_error(tmp_path: Path, config: dict[str, Any], **sections: Any) -> Any:
    from tests.helpers import write_recipe
    from trtllm_forge.errors import ForgeError
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.recipe.load import load_recipe

    recipe = write_recipe(tmp_path / "recipe.yaml", source={"path": "m"}, **sections)
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), config)
    return info.value


def test_plan_time_refusals(tmp_path: Path) -> None:
    """Factor lists that do not fit the rotary channels (exit 2, at the source), the ort
    profile (GroupQueryAttention takes one cos/sin cache per batch) and trtllm-build (exit
    2, named)."""
    from trtllm_forge.errors import ExitCode

    bad = copy.deepcopy(LONGROPE)
    bad["rope_parameters"]["long_factor"] = LONG[:3]
    error = _plan_error(tmp_path, _config(**bad))
    assert error.code == ExitCode.RECIPE and "long_factor as a list of 4" in error.message
    assert error.location is not None and error.location.line > 0
    config = _config(**LONGROPE)
    error = _plan_error(tmp_path, config, build={"profile": "ort"})
    assert error.code == ExitCode.RECIPE and "no LongRoPE" in error.message
    assert "one cos/sin cache" in error.message
    error = _plan_error(tmp_path, config, build={"backend": "trtllm"})
    assert error.code == ExitCode.RECIPE and "LongRoPE" in error.message
