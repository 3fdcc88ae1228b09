"""Verify: metrics math, gates, reports, and inspect (real engine, real reference)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.engine_support import TinyBuild, random_prompts, random_texts, tiny_engine
from trtllm_forge.engine import metrics
from trtllm_forge.engine.inspect import inspect_checkpoint, inspect_engine
from trtllm_forge.engine.verify import evaluate_gates, verify_engine
from trtllm_forge.errors import ExitCode, ForgeError


@pytest.fixture(scope="module")
def fp16_tp2(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    return tiny_engine(tmp_path_factory.mktemp("verify"), "qwen2", dtype="float16", tp=2)


# -- metrics ------------------------------------------------------------------------------


def test_kl_top1_and_perplexity_on_known_values() -> None:
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    assert metrics.kl_per_token(logits, logits) == pytest.approx([0.0, 0.0], abs=1e-12)
    uniform = np.zeros_like(logits)
    expected = [
        0.5 * math.log(1.5) + 0.5 * math.log(0.75),
        0.2 * math.log(0.3) + 0.8 * math.log(2.4),
    ]
    assert metrics.kl_per_token(logits, uniform) == pytest.approx(expected)
    assert metrics.top1_matches(logits, uniform + [0, 0, 1]).tolist() == [False, False]
    # A uniform model over 3 tokens has perplexity 3 whatever the text.
    assert metrics.perplexity(
        metrics.next_token_nll(np.zeros((4, 3)), [0, 2, 1, 1])
    ) == pytest.approx(3.0)
    assert metrics.max_relative_logit_diff(np.array([[2.0, -4.0]]), np.array([[2.0, -3.0]])) == 0.25


def test_token_agreement_and_first_divergence() -> None:
    assert metrics.token_agreement([[1, 2, 3], [4, 5]], [[1, 2, 9], [4, 5]]) == pytest.approx(4 / 5)
    assert metrics.first_divergence([1, 2, 3], [1, 2, 9]) == 2
    assert metrics.first_divergence([1, 2], [1, 2]) is None


def test_gates_compare_in_the_right_direction() -> None:
    values = {"top1_agreement": 0.95, "kl_mean": 0.01, "ppl_ratio": 1.2}
    results = {
        g.name: g
        for g in evaluate_gates(values, {"min_top1": 0.9, "max_kl": 0.001, "max_ppl_ratio": None})
    }
    assert results["min_top1"].passed and not results["max_kl"].passed
    assert "max_ppl_ratio" not in results  # unset gates are reported only
    missing = evaluate_gates({}, {"min_token_agreement": 0.5})[0]
    assert not missing.passed and "not measured" in missing.reason
    with pytest.raises(ForgeError, match="unknown verify gate") as err:
        evaluate_gates(values, {"min_top_1": 0.9})
    assert err.value.code == ExitCode.RECIPE


# -- verify_engine --------------------------------------------------------------------------


def test_verify_passes_and_writes_json_markdown_and_junit(
    fp16_tp2: TinyBuild, tmp_path: Path
) -> None:
    gates = {"min_token_agreement": 0.9, "min_top1": 0.99, "max_kl": 1e-3, "max_ppl_ratio": 1.005,
             "max_rel_logit_diff": 0.05}  # fmt: skip
    result = verify_engine(
        fp16_tp2.engine, fp16_tp2.hf,
        prompts_token_ids=random_prompts(4), texts_token_ids=random_texts(2, 64),
        max_new_tokens=16, gates=gates, out_dir=tmp_path,
    )  # fmt: skip
    assert result.passed, result.gates
    assert [g.name for g in result.gates] == list(gates)
    assert 0 < result.metrics["kl_mean"] < 1e-3 and result.metrics["text_tokens"] == 128

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is True and report["engine"]["mapping"]["tp_size"] == 2
    assert len(report["prompts"]) == 4 and len(report["prompts"][0]["engine"]) == 16
    assert "# Verify report: PASSED" in (tmp_path / "report.md").read_text()
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert [c.get("name") for c in suite.iter("testcase")] == list(gates)
    assert suite.get("failures") == "0" and not list(suite.iter("failure"))


def test_a_failed_gate_is_reported_not_raised(fp16_tp2: TinyBuild, tmp_path: Path) -> None:
    # float16 weights cannot reproduce float32 logits exactly, so a zero tolerance fails.
    result = verify_engine(
        fp16_tp2.engine, fp16_tp2.hf,
        prompts_token_ids=random_prompts(2), texts_token_ids=random_texts(1, 32),
        max_new_tokens=4, gates={"max_rel_logit_diff": 0.0, "min_top1": 0.5}, out_dir=tmp_path,
    )  # fmt: skip
    assert not result.passed
    assert [g.name for g in result.failed_gates()] == ["max_rel_logit_diff"]
    failures = list(ET.parse(tmp_path / "junit.xml").getroot().iter("failure"))
    assert len(failures) == 1 and "max_rel_logit_diff" in failures[0].get("message", "")
    assert (
        "| max_rel_logit_diff | max_rel_logit_diff <= 0 |" in (tmp_path / "report.md").read_text()
    )


def test_verify_without_texts_reports_text_metrics_as_unmeasured(
    fp16_tp2: TinyBuild, tmp_path: Path
) -> None:
    result = verify_engine(
        fp16_tp2.engine, fp16_tp2.hf, prompts_token_ids=random_prompts(2), texts_token_ids=[],
        max_new_tokens=4, gates={"max_kl": 1.0}, out_dir=tmp_path,
    )  # fmt: skip
    assert not result.passed and "kl_mean was not measured" in result.gates[0].reason
    assert json.loads((tmp_path / "report.json").read_text())["gates"][0]["value"] is None


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_engine_and_checkpoint(fp16_tp2: TinyBuild) -> None:
    engine = inspect_engine(fp16_tp2.engine)
    assert engine["backend"] == "onnxruntime" and engine["mapping"]["tp_size"] == 2
    assert engine["onnx"]["weights_dtype"] == "float16" and engine["onnx"]["opset"] >= 21
    rank1 = engine["ranks"][1]
    assert rank1["tp_rank"] == 1 and rank1["layers"] == [0, 2]
    assert {"model.onnx", "model.onnx.data"} <= set(rank1["files"]) and rank1["collectives"] == 5
    assert [i["name"] for i in rank1["inputs"]][:3] == [
        "input_ids",
        "position_ids",
        "attention_mask",
    ]
    assert engine["provenance"]["tools"]["onnxruntime"]

    checkpoint = inspect_checkpoint(fp16_tp2.checkpoint)
    assert checkpoint["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    tensors = checkpoint["ranks"][0]["tensors"]
    qkv = tensors["transformer.layers.0.attention.qkv.weight"]
    # Per rank: 2 query heads + 1 key head + 1 value head, 16 wide each → 64 rows.
    assert qkv == {"dtype": "F16", "shape": [64, 64], "bytes": 64 * 64 * 2}
    assert checkpoint["ranks"][0]["dtypes"] == {"F16": len(tensors)}


def test_verify_build_tokenizes_with_the_snapshot_tokenizer_and_builtin_text(
    tmp_path: Path,
) -> None:
    from trtllm_forge.engine.verify import verify_build

    build = tiny_engine(tmp_path, "llama", with_tokenizer=True)
    summary = verify_build(
        engine_dir=build.engine, reference_dir=build.hf,
        prompts=["The quick brown fox", "Hello world!"], texts=[],  # empty: the built-in eval text
        max_new_tokens=8, max_text_tokens=100,
        gates={"min_token_agreement": 1.0, "max_rel_logit_diff": 1e-4}, out_dir=tmp_path / "report",
    )  # fmt: skip
    assert summary["passed"] and summary["failed_gates"] == []
    assert summary["metrics"]["text_tokens"] == 100  # the built-in text, cut to max_text_tokens
    assert (tmp_path / "report" / summary["reports"]["junit"]).is_file()  # relative to out_dir
    json.dumps(summary)  # the stage stores it as artifact info
