"""Layer-wise calibration (quantize.calibration.mode: layerwise, issue 19).

The layer walk runs each method's own algorithm on one decoder layer at a time, on
the previous layer's output activations computed on the same batches as the
whole-model pass, so the result is the same bits: these tests compare the written
files of both modes byte for byte (rank0.safetensors, config.json) and tensor by
tensor (linears.safetensors, whose header layout differs: the whole-model path
writes it with safetensors' save_file, the walk merges per-layer files), on real
tiny models through real ModelOpt and transformers. Resuming is tested here
in-process on the committed files; the kill -9 tests are in the reliability tier
(tests/reliability/test_layerwise_kill.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.half_records import assert_same_files, tiny_llama
from tests.helpers import assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.quant.calibration import CalibrationSpec
from trtllm_forge.quant.layerwise import calibrate_layerwise
from trtllm_forge.quant.quantize import quantize_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CALIB = CalibrationSpec(samples=6, seq_len=16, seed=0)  # 6: a short last batch for GPTQ's 1s
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "awq": ("awq", {"group_size": 64}, None),
    "gptq_kv": ("gptq", {"group_size": 64, "act_order": True}, "int8"),
    "sq_kv": ("smoothquant", {"alpha": 0.5}, "int8"),
    "sq_token": ("smoothquant", {"activations": "per_token"}, None),
    "fp8_kv": ("fp8", {}, "fp8"),
    "kv_only": ("none", {}, "fp8"),
    "nvfp4": ("nvfp4", {}, None),
    "w4a8_awq": ("w4a8_awq", {"group_size": 64}, None),
    "int4_wo": ("int4_wo", {"group_size": 64}, None),
    # exclude is passed through: layer 1's linears stay float, the others' are AWQ
    "awq_exclude": (
        "awq",
        {"group_size": 64, "exclude": ["lm_head", "transformer.layers.1.*"]},
        None,
    ),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_llama(tmp_path_factory.mktemp("layerwise"), layers=3)


def _both(
    paths: dict[str, Path], name: str, method: str, params: dict[str, Any], kv: str | None
) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    root = paths["root"] / name
    params = dict(params)
    common: dict[str, Any] = {
        "hf_dir": paths["hf"],
        "canonical_dir": paths["canonical"],
        "method": method,
        "exclude": params.pop("exclude", ["lm_head"]),
        "params": params,
        "kv_cache": kv,
        "calibration": CALIB,
    }
    whole = quantize_checkpoint(out_dir=root / "whole", **common)
    layered = calibrate_layerwise(out_dir=root / "layers", work_dir=root / "work", **common)
    return root / "whole", root / "layers", whole, layered


@pytest.mark.parametrize("case", sorted(CASES))
def test_layerwise_equals_whole_model(tiny: dict[str, Path], case: str) -> None:
    method, params, kv = CASES[case]
    whole_dir, layers_dir, whole, layered = _both(tiny, case, method, params, kv)
    assert_same_files(whole_dir, layers_dir)
    assert layered.pop("calibration_mode") == "layerwise"
    assert layered.pop("resumed_at_layer") == 0
    assert layered == whole
    quantized = 0 if method == "none" else 2 * 5 if case == "awq_exclude" else 3 * 5
    assert len(whole["quantized_modules"]) == quantized


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_layerwise_families(tmp_path: Path, arch: str) -> None:
    """q/k/v biases (Qwen2), q/k norms and a head_dim apart from hidden/heads (Qwen3)."""
    hf = make_tiny_hf(arch, tmp_path / "hf", with_tokenizer=True)
    convert_hf_checkpoint(hf, tmp_path / "canonical", dtype="float16")
    paths = {"hf": hf, "canonical": tmp_path / "canonical", "root": tmp_path}
    whole_dir, layers_dir, _, _ = _both(paths, "awq", "awq", {"group_size": 32}, "int8")
    assert_same_files(whole_dir, layers_dir)


def test_activations_past_the_bound_are_read_from_disk(tiny: dict[str, Path]) -> None:
    """With no room in memory every layer reads its input memory-mapped from the work
    folder: the same bytes (GPTQ: one batch per window, six batches per layer)."""
    method, params, kv = CASES["gptq_kv"]
    root = tiny["root"] / "spill"
    common: dict[str, Any] = {
        "hf_dir": tiny["hf"],
        "canonical_dir": tiny["canonical"],
        "method": method,
        "params": params,
        "kv_cache": kv,
        "calibration": CALIB,
    }
    quantize_checkpoint(out_dir=root / "whole", **common)
    calibrate_layerwise(out_dir=root / "layers", work_dir=root / "work", stream_bound=0, **common)
    assert_same_files(root / "whole", root / "layers")


_KILLED_WALK = """
import sys
from pathlib import Path
from trtllm_forge.quant.calibration import CalibrationSpec
from trtllm_forge.quant.layerwise import calibrate_layerwise
hf, canonical, root = (Path(a) for a in sys.argv[1:4])
calibrate_layerwise(hf_dir=hf, canonical_dir=canonical, out_dir=root / "killed",
    work_dir=root / "work", method="awq", params={"group_size": 64},
    calibration=CalibrationSpec(samples=6, seq_len=16, seed=0))
"""


def test_resumes_at_the_first_layer_not_committed(tiny: dict[str, Path]) -> None:
    """A walk killed (SIGKILL, a real subprocess) right after committing layer 1 resumes
    at layer 2 and writes the bytes of an uninterrupted walk; a finished folder is only
    assembled again; a torn layer file is never used; another calibration's folder is
    emptied."""
    root = tiny["root"] / "resume"
    root.mkdir()
    env = {**os.environ, "FORGE_FAULT": "calibrate.layer.committed:2", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _KILLED_WALK, str(tiny["hf"]), str(tiny["canonical"]), str(root)]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = root / "work"
    assert sorted(p.name for p in work.glob("layer-*.json")) == [
        "layer-00000.json",
        "layer-00001.json",
    ]
    walk = json.loads((work / "walk.json").read_text())
    assert walk["format"] == 1 and walk["identity"].startswith("blake3:")
    args: dict[str, Any] = {
        "hf_dir": tiny["hf"],
        "canonical_dir": tiny["canonical"],
        "method": "awq",
        "params": {"group_size": 64},
        "calibration": CALIB,
        "work_dir": work,
    }
    resumed = calibrate_layerwise(out_dir=root / "resumed", **args)
    assert resumed["resumed_at_layer"] == 2
    whole = quantize_checkpoint(
        out_dir=root / "whole", **{k: v for k, v in args.items() if k != "work_dir"}
    )
    assert_same_files(root / "whole", root / "resumed")
    assert resumed["records"] == whole["records"] and resumed["kv_amax"] == whole["kv_amax"]
    assert [p.name for p in work.glob("stream-*.bin")] == ["stream-00002.bin"]

    finished = calibrate_layerwise(out_dir=root / "finished", **args)
    assert finished["resumed_at_layer"] == 3  # nothing left to calibrate
    assert_same_files(root / "whole", root / "finished")

    with open(work / "layer-00002.safetensors", "r+b") as torn:
        torn.seek(100)
        torn.write(b"\xff\xfe")
    redone = calibrate_layerwise(out_dir=root / "redone", **args)
    assert redone["resumed_at_layer"] == 0  # layer 1's activations are gone: start over
    assert_same_files(root / "whole", root / "redone")

    other = calibrate_layerwise(out_dir=root / "other", **{**args, "params": {"group_size": 32}})
    assert other["resumed_at_layer"] == 0  # a different calibration never reuses a layer


def test_refuses_what_the_walk_cannot_do_in_the_library(tmp_path: Path) -> None:
    hf = make_tiny_hf("gpt2", tmp_path / "hf", with_tokenizer=True)
    convert_hf_checkpoint(hf, tmp_path / "canonical", dtype="float16")
    with pytest.raises(ForgeError, match="does not walk gpt2 models") as caught:
        calibrate_layerwise(
            hf_dir=hf,
            canonical_dir=tmp_path / "canonical",
            out_dir=tmp_path / "out",
            work_dir=tmp_path / "work",
            method="awq",
            params={"group_size": 32},
            calibration=CALIB,
        )
    assert caught.value.code == ExitCode.RECIPE
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def _recipe(tmp_path: Path, model: Path, **quantize: Any) -> Path:
    calibration = {"samples": 4, "seq_len": 16, "mode": "layerwise"}
    return write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        quantize={**quantize, "calibration": calibration},
    )


def test_plan_refuses_a_family_the_walk_cannot_build(tmp_path: Path) -> None:
    model = make_tiny_hf("mixtral", tmp_path / "moe", with_tokenizer=True)
    run = forge("plan", str(_recipe(tmp_path, model, method="awq", group_size=32)))
    assert_clean_error(run, 2, "does not walk mixtral models", "quantize.calibration.mode")


def test_plan_refuses_a_quantized_head(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    recipe = _recipe(
        tmp_path, tiny_models["llama"], method="int4_wo", group_size=32, quantize_lm_head=True
    )
    doc = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**doc, "build": {"profile": "ort"}}))
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "does not quantize lm_head yet")


def test_build_shows_layers_and_keys_layerwise_apart(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """`forge build` logs each committed layer with an ETA; the layerwise key differs from
    the whole-model key, and `mode: whole` keys exactly as a recipe without the field."""
    recipe = _recipe(tmp_path, tiny_models["llama"], method="awq", group_size=32)
    run = forge("build", str(recipe), "--until", "calibrate", "--json")
    assert run.code == 0, run.err
    assert "layer 0 committed (1/2)" in run.err and "layer 1 committed (2/2)" in run.err
    assert "ETA" in run.err
    keys = {}
    for mode in ("layerwise", "whole", None):
        doc: dict[str, Any] = {"samples": 4, "seq_len": 16}
        if mode:
            doc["mode"] = mode
        write_recipe(
            tmp_path / f"{mode}.yaml",
            source={"path": str(tiny_models["llama"])},
            quantize={"method": "awq", "group_size": 32, "calibration": doc},
        )
        plan = forge("plan", str(tmp_path / f"{mode}.yaml"), "--json")
        assert plan.code == 0, plan.err
        keys[mode] = _stage_key(plan.json(), "calibrate")
    assert keys["whole"] == keys[None] != keys["layerwise"]
    assert keys["layerwise"] == _stage_key(run.json(), "calibrate")
    assert not list((Path(_home()) / "tmp").glob("*.layers"))  # removed once committed


def _stage_key(doc: Any, stage: str) -> str:
    stages = doc["stages"] if isinstance(doc, dict) else doc
    found = [s for s in stages if s["stage"] == stage]
    return str(found[0]["key"])


def _home() -> str:
    import os

    return os.environ["FORGE_HOME"]


def _half_walk(tiny: dict[str, Path], case: str, **extra: Any) -> dict[str, Any]:
    """calibrate_layerwise's arguments for a float16 walk of one CASES entry."""
    method, params, kv = CASES[case]
    return {
        "hf_dir": tiny["hf"],
        "canonical_dir": tiny["canonical"],
        "method": method,
        "params": dict(params),
        "kv_cache": kv,
        "calibration": CALIB,
        **extra,
        "dtype": "float16",
    }


@pytest.mark.parametrize("case", ["awq", "gptq_kv", "int4_wo"])
def test_packing_where_calibrated_writes_the_same_bytes(
    tiny: dict[str, Path], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the walk packs an int4 layer where it was calibrated and brings only
    packed weights and ranges to the host (layerwise_assemble.on_device). Forced here
    on the CPU in float16, that branch writes the files the host branch writes."""
    from trtllm_forge.quant import formats, layerwise, layerwise_assemble
    from trtllm_forge.quant.device import Placement

    root = tiny["root"] / f"device-{case}"
    common = _half_walk(tiny, case)
    host = calibrate_layerwise(out_dir=root / "host", work_dir=root / "host.work", **common)
    kept: list[int] = []
    to_float32 = Placement.to_float32

    def counted(self: Placement, result: Any) -> Any:
        kept.append(len(result.linears))
        return to_float32(self, result)

    def forced(placement: Placement, spec: Any) -> bool:
        return formats.packs_on_device(spec.quant_algo)

    monkeypatch.setattr(Placement, "to_float32", counted)
    monkeypatch.setattr(layerwise, "on_device", forced)
    monkeypatch.setattr(layerwise_assemble, "on_device", forced)
    device = calibrate_layerwise(out_dir=root / "device", work_dir=root / "device.work", **common)
    assert kept == [7, 7, 7]  # every layer took the device branch
    assert_same_files(root / "host", root / "device")
    assert device == host


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ["awq", "gptq_kv", "int4_wo"])
def test_packing_on_the_gpu_writes_the_host_bytes(
    tiny: dict[str, Path], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU in float16 the walk packs int4 layers there; with that branch turned
    off (every record brought to the host in float32 and packed there, as before) the
    same calibration writes the same files."""
    from trtllm_forge.quant import layerwise, layerwise_assemble

    root = tiny["root"] / f"cuda-{case}"
    common = _half_walk(tiny, case, device="cuda")
    device = calibrate_layerwise(out_dir=root / "device", work_dir=root / "device.work", **common)
    monkeypatch.setattr(layerwise, "on_device", lambda placement, spec: False)
    monkeypatch.setattr(layerwise_assemble, "on_device", lambda placement, spec: False)
    host = calibrate_layerwise(out_dir=root / "host", work_dir=root / "host.work", **common)
    assert_same_files(root / "host", root / "device")
    assert device == host
