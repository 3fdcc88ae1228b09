"""Hugging Face targets on the tiny Llama: every method × both formats.

* ModelOpt format: forge's folder equals ModelOpt 0.47's own ``export_hf_checkpoint``
  of the same calibration (same model, same windows): JSON fields, tensor names,
  dtypes and bytes.
* compressed-tensors: transformers + compressed-tensors load the folder on the CPU
  (decompressing it) and its logits equal forge's fake-quant model of the canonical
  checkpoint (docs/outputs.md states the tolerance).

Calibration runs once per method (module-scoped) and both formats reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests import quant_format_support as qf
from tests.tinymodels import make_tiny_hf

torch.set_num_threads(1)

GROUP = 32  # the tiny Llama is 64 wide
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "int8_wo": ("int8_wo", {}, None),
    "int4_wo": ("int4_wo", {"group_size": GROUP}, None),
    "gptq": ("gptq", {"group_size": GROUP, "act_order": True}, None),
    "awq": ("awq", {"group_size": GROUP}, None),
    "smoothquant": ("smoothquant", {}, None),
    "fp8": ("fp8", {}, None),
    "fp8_pcpt": ("fp8", {"granularity": "per_channel_per_token"}, None),
    "int8_wo+int8kv": ("int8_wo", {}, "int8"),
    "fp8+fp8kv": ("fp8", {}, "fp8"),
    "int4_wo+fp8kv": ("int4_wo", {"group_size": GROUP}, "fp8"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf("llama", tmp_path_factory.mktemp("hf-src") / "llama", with_tokenizer=True)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(4, 256, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def canonical(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    out = tmp_path_factory.mktemp("hf-canonical")
    convert_hf_checkpoint(tiny, out, dtype="float32")
    return out


@pytest.fixture(scope="module")
def calibrated(
    tiny: Path, canonical: Path, tokens: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
):
    """case → calibrate artifact dir, computed on first use."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    done: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in done:
            method, params, kv = CASES[case]
            out = tmp_path_factory.mktemp(f"cal-{case}")
            quantize_checkpoint(
                hf_dir=tiny,
                canonical_dir=canonical,
                out_dir=out,
                method=method,
                params=params,
                kv_cache=kv,
                calibration=tokens,
            )
            done[case] = out
        return done[case]

    return get


def _folder(tiny: Path, cal: Path, target: str, out: Path) -> Path:
    from trtllm_forge.hf.folder import write_hf_folder

    write_hf_folder(hf_dir=tiny, calibrated_dir=cal, out_dir=out, target=target)  # type: ignore[arg-type]
    return out


# -- ModelOpt's own export of the same calibration ---------------------------------


def _modelopt_export(tiny: Path, tokens: torch.Tensor, case: str, out: Path) -> Path:
    """Calibrate a fresh model with ModelOpt exactly as forge does, then let ModelOpt export it."""
    import copy

    from modelopt.torch.export import export_hf_checkpoint

    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant import calibration as calib
    from trtllm_forge.quant import modelopt_glue, registry
    from trtllm_forge.quant.capture import decoder
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.targets import plan_targets

    method, params, kv = CASES[case]
    model = load_hf_model(tiny)
    targets = plan_targets(load_hf_config(tiny), ["lm_head"]).hf_modules()
    data = calib.from_tokens(tokens)
    mtq = modelopt_glue.mtq()
    if method == "int8_wo":
        # forge's own RTN INT8 equals ModelOpt's INT8_WEIGHT_ONLY max calibration.
        config = modelopt_glue.target_config(copy.deepcopy(mtq.INT8_WEIGHT_ONLY_CFG), targets)
    elif method == "int4_wo":
        # forge's RTN INT4 equals ModelOpt's INT4_BLOCKWISE_WEIGHT_ONLY max calibration.
        preset = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
        weight_cfg, _ = modelopt_glue.preset_numerics(preset)
        assert weight_cfg is not None
        weight_cfg["block_sizes"] = {-1: params["group_size"], "type": "static"}
        config = modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)
    else:
        module = registry.get(method).load()
        config = module.modelopt_config(registry.validate_params(method, params), targets)
    if kv:
        bits = (4, 3) if kv == "fp8" else 8
        config["quant_cfg"].append(
            {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}}
        )

    def forward_loop(m: Any) -> None:  # forge's calibration loop (modelopt_glue.calibrate)
        with torch.no_grad():
            for ids in data.batches(modelopt_glue.BATCH_SIZE):
                decoder(m)(input_ids=ids)

    # mtq.quantize itself: forge's calibrate wraps ModelOpt's model plugins, which also
    # registers the attention classes the KV-cache quantizers need.
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        mtq.quantize(model, config, forward_loop)
    model.config.architectures = model.config.architectures or [type(model).__name__]
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        export_hf_checkpoint(model, dtype=torch.float32, export_dir=out)
    return out


MODELOPT_CASES = ["int8_wo", "int4_wo", "awq", "smoothquant", "fp8", "fp8_pcpt", "fp8+fp8kv"]


@pytest.mark.parametrize("case", MODELOPT_CASES)
def test_modelopt_folder_equals_modelopt_export(
    case: str, tiny: Path, tokens: torch.Tensor, calibrated: Any, tmp_path: Path
) -> None:
    ours = _folder(tiny, calibrated(case), "modelopt", tmp_path / "forge")
    theirs = _modelopt_export(tiny, tokens, case, tmp_path / "modelopt")
    qf.assert_modelopt_folders_equal(ours, theirs)


# -- compressed-tensors through the real loader -------------------------------------

CT_CASES = ["int8_wo", "int4_wo", "gptq", "fp8", "fp8_pcpt", "int8_wo+int8kv", "fp8+fp8kv"]


@pytest.mark.parametrize("case", CT_CASES)
def test_compressed_tensors_folder_loads_and_matches_fake_quant(
    case: str, tiny: Path, calibrated: Any, tmp_path: Path
) -> None:
    import transformers

    from trtllm_forge.quant.fakequant import FakeQuantForward
    from trtllm_forge.quant.quantize import load_hf_model

    folder = _folder(tiny, calibrated(case), "compressed-tensors", tmp_path / "ct")
    ids = torch.randint(4, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)  # decompresses on the CPU
    assert "compressed" in type(model.hf_quantizer).__name__.lower()
    fake = FakeQuantForward(calibrated(case))
    fake.forward.kv_hook = _kv_hook(folder, CASES[case][2])
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
        want = fake.logits(ids)
        float_logits = load_hf_model(tiny)(input_ids=ids).logits
    fake.close()
    vs_fake = float((got - want).norm() / want.norm())
    vs_float = float((got - float_logits).norm() / float_logits.norm())
    print(case, vs_fake, vs_float)
    assert vs_fake < 1e-5
    assert vs_float > 1e-4  # the loader really ran quantized weights
    params = CASES[case][1] or {}
    (group,) = json.loads((folder / "config.json").read_text())["quantization_config"][
        "config_groups"
    ].values()
    assert group["weights"].get("actorder") == ("weight" if params.get("act_order") else None)


def _kv_hook(folder: Path, kv: str | None) -> Any:
    """Q/DQ of K and V with the folder's own ``k_scale`` / ``v_scale`` (compressed-tensors
    keeps one per cache; the canonical checkpoint shares one)."""
    from trtllm_forge.quant import layout

    if kv is None:
        return None
    tensors = qf.tensors(folder)
    fq = layout.fake_quant_fp8 if kv == "fp8" else layout.fake_quant_int8

    def hook(layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = layer.split(".")[-1]
        prefix = f"model.layers.{index}.self_attn"
        # compressed-tensors: self_attn.k_scale; ModelOpt: self_attn.k_proj.k_scale
        k_name, v_name = f"{prefix}.k_scale", f"{prefix}.v_scale"
        if k_name not in tensors:
            k_name, v_name = f"{prefix}.k_proj.k_scale", f"{prefix}.v_proj.v_scale"
        k_scale = tensors[k_name].float().reshape(())
        v_scale = tensors[v_name].float().reshape(())
        return fq(k, k_scale), fq(v, v_scale)

    return hook


# -- every method × both formats: verify through the real loaders, and refusals --------

MATRIX = [
    (case, target)
    for case in CASES
    for target in ("modelopt", "compressed-tensors")
    if not (case == "int8_wo+int8kv" and target == "modelopt")
    and not (case in ("awq", "smoothquant") and target == "compressed-tensors")
]


@pytest.mark.parametrize(("case", "target"), MATRIX)
def test_verify_gates_green(
    case: str, target: str, tiny: Path, calibrated: Any, tmp_path: Path
) -> None:
    from trtllm_forge.hf.verify import verify_hf_folder

    folder = _folder(tiny, calibrated(case), target, tmp_path / "hf")
    summary = verify_hf_folder(
        folder=folder,
        reference_dir=tiny,
        prompts=["The quick brown fox", "Once upon a time"],
        texts=["The quick brown fox jumps over the lazy dog. " * 6],
        max_new_tokens=4,
        max_text_tokens=64,
        gates={"min_top1": 0.5, "max_ppl_ratio": 1.5},
        out_dir=tmp_path / "verify",
    )
    assert summary["passed"], summary["metrics"]
    assert summary["folder"]["format"] == target
    assert summary["metrics"]["kl_mean"] > 0  # the quantized model, not the reference
    assert (tmp_path / "verify" / "report.json").is_file()


def test_verify_streams_blocks_and_equals_whole_text_metrics(
    tiny: Path, calibrated: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF-target verify goes through the bounded-memory comparison: in 16-token blocks
    (spilled, then read back) it finds what float64 over both models' whole-text logits
    finds, reports the tokens it scored, and leaves no spill file behind."""
    from trtllm_forge.engine import metrics, streaming
    from trtllm_forge.engine.verify import load_reference, reference_logits, tokenized
    from trtllm_forge.hf.verify import load_folder_model, verify_hf_folder

    folder = _folder(tiny, calibrated("int8_wo"), "compressed-tensors", tmp_path / "hf")
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    monkeypatch.setattr(streaming, "REFERENCE_BLOCK_BYTES", 16 * 4 * vocab)
    text = "The quick brown fox jumps over the lazy dog. " * 12
    summary = verify_hf_folder(
        folder=folder, reference_dir=tiny, prompts=["Once upon a time"], texts=[text],
        max_new_tokens=3, max_text_tokens=100, gates={}, out_dir=tmp_path / "verify",
    )  # fmt: skip
    _, (ids,), (length,) = tokenized(tiny, [], [text], 100)
    assert len(ids) == 100 < length and summary["metrics"]["text_tokens"] == 100
    assert summary["texts"][0]["scored_tokens"] == 100 and summary["texts"][0]["tokens"] == length
    window = 1 << 30
    ref = reference_logits(load_reference(tiny), ids, window)
    got = reference_logits(load_folder_model(folder), ids, window)
    kl = metrics.kl_per_token(ref, got)
    assert kl.mean() > 0
    assert summary["metrics"]["kl_mean"] == pytest.approx(kl.mean(), rel=1e-3)
    assert summary["metrics"]["top1_agreement"] == metrics.top1_matches(ref, got).mean()
    ppl_ratio = metrics.perplexity(metrics.next_token_nll(got, ids)) / metrics.perplexity(
        metrics.next_token_nll(ref, ids)
    )
    assert summary["metrics"]["ppl_ratio"] == pytest.approx(ppl_ratio, rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "verify").iterdir()) == [
        "junit.xml", "report.json", "report.md"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "target", "fragment"),
    [
        ("awq", "compressed-tensors", "pre-quant scale"),
        ("smoothquant", "compressed-tensors", "pre-quant scale"),
        ("int8_wo+int8kv", "modelopt", "INT8 KV"),
    ],
)
def test_uncarriable_combination_is_refused_before_writing(
    case: str, target: str, fragment: str, tiny: Path, calibrated: Any, tmp_path: Path
) -> None:
    from trtllm_forge.errors import ExitCode, ForgeError

    with pytest.raises(ForgeError, match=fragment) as caught:
        _folder(tiny, calibrated(case), target, tmp_path / "hf")
    assert caught.value.code == ExitCode.RECIPE
    assert not (tmp_path / "hf").exists()


def test_records_rebuild_every_modelopt_weight_from_the_snapshot(calibrated: Any) -> None:
    """Only GPTQ's error-fed weights are stored, as int4 values; AWQ/SmoothQuant smoothing
    is rebuilt from the snapshot."""
    names: dict[str, list[str]] = {}
    for case in ("awq", "smoothquant", "fp8", "gptq"):
        with safe_open(str(calibrated(case) / "linears.safetensors"), framework="pt") as handle:
            names[case] = [n for n in handle.keys() if ".weight" in n and "amax" not in n]
            dtypes = {handle.get_slice(n).get_dtype() for n in names[case]}
        if case == "gptq":
            assert len(names[case]) == 14 and all(n.endswith(".weight_int4") for n in names[case])
            assert dtypes == {"I8"}
    assert names["awq"] == names["smoothquant"] == names["fp8"] == []


def test_docs_method_table_is_generated_from_the_records() -> None:
    from trtllm_forge.hf.docs import BEGIN, END, render_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    committed = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert committed == render_table(), (
        "run: python -m trtllm_forge.hf.docs (paste into docs/outputs.md)"
    )


@pytest.mark.parametrize("case", ["int8_wo", "int4_wo", "gptq", "fp8_pcpt", "int4_wo+fp8kv"])
def test_modelopt_reader_matches_fake_quant(
    case: str, tiny: Path, calibrated: Any, tmp_path: Path
) -> None:
    """Where ModelOpt's fusion rule leaves the canonical numbers alone (per-channel and
    per-group weights, no shared input scale), forge's independent reader of the ModelOpt
    folder computes what the fake-quant model of the canonical checkpoint computes."""
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model
    from trtllm_forge.quant.fakequant import FakeQuantForward

    folder = _folder(tiny, calibrated(case), "modelopt", tmp_path / "mo")
    ids = torch.randint(4, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    fake = FakeQuantForward(calibrated(case))
    fake.forward.kv_hook = _kv_hook(folder, CASES[case][2])  # the folder's own K/V scales
    with torch.no_grad():
        got = load_modelopt_model(folder)(input_ids=ids).logits
        want = fake.logits(ids)
    fake.close()
    assert float((got - want).norm() / want.norm()) < 1e-5


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second family: Qwen2 has q/k/v biases."""
    return make_tiny_hf("qwen2", tmp_path_factory.mktemp("hf-qwen2") / "qwen2", with_tokenizer=True)


@pytest.mark.parametrize("case", ["awq", "smoothquant", "fp8+fp8kv"])
def test_modelopt_folder_equals_modelopt_export_qwen2(
    case: str, qwen2: Path, tokens: torch.Tensor, tmp_path: Path
) -> None:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    method, params, kv = CASES[case]
    convert_hf_checkpoint(qwen2, tmp_path / "canonical", dtype="float32")
    quantize_checkpoint(
        hf_dir=qwen2,
        canonical_dir=tmp_path / "canonical",
        out_dir=tmp_path / "cal",
        method=method,
        params=params,
        kv_cache=kv,
        calibration=tokens,
    )
    ours = _folder(qwen2, tmp_path / "cal", "modelopt", tmp_path / "forge")
    theirs = _modelopt_export(qwen2, tokens, case, tmp_path / "modelopt")
    for name in ("hf_quant_config.json", "config.json"):
        mine, want = (json.loads((d / name).read_text()) for d in (ours, theirs))
        assert mine.get("quantization_config") == want.get("quantization_config"), name
        assert mine.get("quantization") == want.get("quantization"), name
    mine_t = qf.tensors(ours)
    assert any(name.endswith("q_proj.bias") for name in mine_t)
    qf.assert_same_bytes(mine_t, qf.tensors(theirs))


@pytest.mark.parametrize(
    ("case", "target", "want"),
    [
        ("gptq", "compressed-tensors", ("W4A16", GROUP, None, "pack-quantized")),
        ("fp8+fp8kv", "compressed-tensors", ("FP8", None, "FP8", "float-quantized")),
        ("awq", "modelopt", ("W4A16_AWQ", GROUP, None, None)),
        ("fp8+fp8kv", "modelopt", ("FP8", None, "FP8", None)),
    ],
)
def test_describe_reads_what_the_writer_wrote(
    case: str, target: str, want: tuple[Any, ...], tiny: Path, calibrated: Any, tmp_path: Path
) -> None:
    from trtllm_forge.hf.reader import describe

    info = describe(_folder(tiny, calibrated(case), target, tmp_path / "hf"))
    assert (info.quant_algo, info.group_size, info.kv_cache, info.compression) == want
    assert info.format == target and "lm_head" in info.excluded_modules
    assert info.serving == {"tensor_parallel_size": 1, "pipeline_parallel_size": 1}
