"""A verify run without gates says "no gates", not "PASSED" (issue 17: a report with no
gates read PASSED at 77 % top-1 agreement); the CLI's table title uses the same verdict."""

from __future__ import annotations

from trtllm_forge.engine.report import render_markdown, verdict
from trtllm_forge.engine.verify import GateResult, VerifyResult


def _result(gates: list[GateResult]) -> VerifyResult:
    engine = {"backend": "onnxruntime", "mapping": {"tp_size": 1, "pp_size": 1}}
    return VerifyResult(metrics={"top1_agreement": 0.77}, gates=gates, prompts=[], engine=engine)


def _gate(passed: bool) -> GateResult:
    return GateResult("min_top1", "top1_agreement", ">=", 0.7, 0.77 if passed else 0.5, passed)


def test_report_without_gates_says_so() -> None:
    text = render_markdown(_result([]))
    assert text.startswith("# Verify report: no gates (metrics only)")
    assert "PASSED" not in text


def test_report_with_gates_says_passed_or_failed() -> None:
    assert render_markdown(_result([_gate(True)])).startswith("# Verify report: PASSED")
    assert render_markdown(_result([_gate(False)])).startswith("# Verify report: FAILED")
    assert verdict(passed=True, gated=False) == "no gates (metrics only)"
