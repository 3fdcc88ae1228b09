"""What a verify run found: its gates and metrics (read by engine/verify.py, which computes
them, and engine/report.py, which writes them out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateResult:
    name: str
    metric: str
    comparison: str
    threshold: float
    value: float | None
    passed: bool
    reason: str = ""


@dataclass
class VerifyResult:
    metrics: dict[str, float]
    gates: list[GateResult]
    prompts: list[dict[str, Any]]  # per prompt: reference/engine tokens, first divergence
    engine: dict[str, Any]  # backend, mapping, quantization of the engine verified
    files: dict[str, str] = field(default_factory=dict)
    texts: list[dict[str, Any]] = field(default_factory=list)  # per text: tokens scored, where

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metrics": self.metrics,
            "gates": [asdict(g) for g in self.gates],
            "prompts": self.prompts,
            "engine": self.engine,
            "files": self.files,
            "texts": self.texts,
        }
