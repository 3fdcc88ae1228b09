"""Verify reports: report.json (everything), report.md (for people), junit.xml (for CI).

junit.xml has one testcase per gate with a threshold; a failed gate is a <failure>
whose message states metric, value and threshold, so CI dashboards show why.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trtllm_forge.engine.verify_result import GateResult, VerifyResult

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
JUNIT_XML = "junit.xml"


def write_reports(result: VerifyResult, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / REPORT_JSON,
        "markdown": out_dir / REPORT_MD,
        "junit": out_dir / JUNIT_XML,
    }
    # Names relative to the report's own directory: absolute paths would point into a
    # staging dir and make two identical verify runs differ byte for byte.
    result.files = {k: v.name for k, v in paths.items()}
    paths["json"].write_text(json.dumps(_finite(result.to_json()), indent=2, sort_keys=True) + "\n")
    paths["markdown"].write_text(render_markdown(result))
    paths["junit"].write_bytes(render_junit(result))
    return paths


def _finite(value: object) -> object:
    """JSON has no NaN: unmeasured metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.6g}"


def _gate_line(gate: GateResult) -> str:
    status = "PASS" if gate.passed else "FAIL"
    why = f" ({gate.reason})" if gate.reason else ""
    return f"| {gate.name} | {gate.metric} {gate.comparison} {_fmt(gate.threshold)} | {_fmt(gate.value)} | {status}{why} |"


def verdict(*, passed: bool, gated: bool) -> str:
    """A verify run's one-word outcome. Without gates nothing was checked: "PASSED" at
    77 % top-1 agreement misled a newcomer, so say so instead."""
    if not gated:
        return "no gates (metrics only)"
    return "PASSED" if passed else "FAILED"


def render_markdown(result: VerifyResult) -> str:
    engine = result.engine
    mapping = engine.get("mapping") or {}
    quant = (engine.get("quantization") or {}).get("quant_algo") or "none"
    lines = [
        f"# Verify report: {verdict(passed=result.passed, gated=bool(result.gates))}",
        "",
        f"Engine: backend `{engine.get('backend')}`, tp {mapping.get('tp_size')}, "
        f"pp {mapping.get('pp_size')}, quantization `{quant}`.",
        "",
        "## Gates",
        "",
    ]
    if result.gates:
        lines += ["| gate | rule | value | result |", "|---|---|---|---|"]
        lines += [_gate_line(g) for g in result.gates]
    else:
        lines.append("No gate thresholds were set; metrics are reported only.")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in sorted(result.metrics.items())]
    if result.texts:
        lines += [
            "",
            "## Scored texts",
            "",
            "| text | tokens | scored | scored range | windows |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['text']} | {t['tokens']} | {t['scored_tokens']} | "
            f"[{t['scored_from']}, {t['scored_to']}) | {t['windows']} |"
            for t in result.texts
        ]
    lines += [
        "",
        "## Greedy generation",
        "",
        "| prompt | prompt tokens | first divergence |",
        "|---|---|---|",
    ]
    for index, row in enumerate(result.prompts):
        divergence = row["first_divergence"]
        lines.append(
            f"| {index} | {row['prompt_tokens']} | {'none' if divergence is None else divergence} |"
        )
    return "\n".join(lines) + "\n"


def render_junit(result: VerifyResult) -> bytes:
    failures = len(result.failed_gates())
    suite = ET.Element(
        "testsuite",
        name="forge.verify",
        tests=str(len(result.gates)),
        failures=str(failures),
        errors="0",
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in sorted(result.metrics.items()):
        ET.SubElement(properties, "property", name=name, value=_fmt(value))
    for gate in result.gates:
        case = ET.SubElement(suite, "testcase", classname="forge.verify.gates", name=gate.name)
        if not gate.passed:
            failure = ET.SubElement(
                case,
                "failure",
                message=f"{gate.metric} = {_fmt(gate.value)}, required {gate.comparison} {_fmt(gate.threshold)}",
            )
            failure.text = gate.reason or None
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data
