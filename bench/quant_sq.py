"""Where per-tensor SmoothQuant loses on SmolLM2-135M: fake-quant ablations of one
checkpoint, printed as Markdown (quoted in docs/quantization.md).

    python -m bench.quant_sq [--windows 2] [--checkpoint DIR]

Takes the SmoothQuant alpha 0.5 per-tensor checkpoint `python -m bench.quant` built
(its results.json names it) and, with forge's fake-quant forward:

* per kind of linear input (attention.qkv, attention.dense, mlp.fc/gate, mlp.proj):
  how many INT8 steps of the static per-tensor scale a typical smoothed activation
  spans, and the fraction that rounds to zero;
* the perplexity when one kind's inputs are left in float, or quantized per token
  instead, the other kinds staying per-tensor — which inputs carry the loss.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import lib, quant

KINDS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.proj")  # mlp.gate: mlp.fc's input


def kind(module: str) -> str:
    if not module.startswith("transformer.layers."):
        return module
    name = module.split(".", 3)[3]
    return "mlp.fc" if name == "mlp.gate" else name


class Ablation:
    """Fake quant of ``ckpt`` with some kinds' input Q/DQ replaced (``float`` / ``per_token``)."""

    def __init__(
        self,
        ckpt: Path,
        mode: str | None = None,
        kinds: tuple[str, ...] = (),
        collect: bool = False,
    ) -> None:
        self.ckpt, self.mode, self.kinds, self.collect = ckpt, mode, kinds, collect
        self.steps: dict[str, list[Any]] = defaultdict(list)  # module -> |x| / scale per window

    def hook(self, activations: Any, reader: Any) -> Any:
        """``activations`` (the fake quant's own input transform) with the ablation applied;
        the static scales are read from the checkpoint (``reader``)."""
        from trtllm_forge.quant import layout
        from trtllm_forge.quant.fakequant import per_token_scale

        scales: dict[str, tuple[Any, Any]] = {}

        def tensor(name: str) -> Any:
            return reader.get(name).float().reshape(-1) if reader.has(name) else None

        def transform(module: str, x: Any) -> Any:
            if module not in scales:
                scales[module] = (
                    tensor(f"{module}.activation_scaling_factor"),
                    tensor(f"{module}.prequant_scaling_factor"),
                )
            scale, prequant = scales[module]
            if scale is None:
                return activations(module, x)
            smoothed = x * prequant if prequant is not None else x
            if self.collect:
                self.steps[module].append((smoothed / scale).abs().flatten())
            if kind(module) not in self.kinds:
                return activations(module, x)
            if self.mode == "float":
                return smoothed
            return layout.fake_quant_int8(smoothed, per_token_scale(smoothed, layout.INT8_MAX))

        return transform

    def perplexity(self, windows: Any) -> float:
        from trtllm_forge.quant.fakequant import FakeQuantForward

        fake = FakeQuantForward(self.ckpt)
        fake.forward.activation_hook = self.hook(fake.forward.activation_hook, fake.reader)
        try:
            return lib.window_perplexity(lib.fake_quant_logits(fake), windows)
        finally:
            fake.close()


def step_lines(steps: dict[str, list[Any]]) -> list[str]:
    import torch

    per_kind: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for module, parts in steps.items():
        r = torch.cat(parts)
        per_kind[kind(module)].append(
            (float(r.median()), float((r < 0.5).float().mean()), float(r.max()))
        )
    lines = [
        "| input of | median \\|x\\| in INT8 steps (median over layers) "
        "| rounds to 0 (median over layers) | worst layer: rounds to 0 | largest \\|x\\| (steps) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in KINDS:
        rows = per_kind[name]
        medians = sorted(r[0] for r in rows)
        zeros = sorted(r[1] for r in rows)
        lines.append(
            f"| `{name}` | {medians[len(medians) // 2]:.2f} | {zeros[len(zeros) // 2]:.0%} "
            f"| {max(zeros):.0%} | {max(r[2] for r in rows):.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.quant_sq", description=__doc__.splitlines()[0]
    )
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--results", type=Path, default=quant.HOME / "results.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    ckpt = args.checkpoint
    if ckpt is None:
        rows = json.loads(args.results.read_text())["rows"]
        params = {"alpha": 0.5, "activations": "per_tensor"}
        ckpt = next(Path(r["checkpoint"]) for r in rows if r["case"]["params"] == params)
    windows = lib.eval_windows(args.windows, 512)
    ref = quant.Reference(windows).ppl

    def row(what: str, ppl: float) -> str:
        return f"| {what} | {ppl:.3f} | {100 * (ppl / ref - 1):+.1f} % |"

    base = Ablation(ckpt, collect=True)
    out = [
        f"Fake quant, {args.windows} windows × 512 tokens; reference perplexity {ref:.3f}.",
        "",
        "| activations of the α 0.5 checkpoint | perplexity | vs reference |",
        "|---|---:|---:|",
        row("all per-tensor (static)", base.perplexity(windows)),
    ]
    for name in KINDS:
        for mode in ("float", "per_token"):
            ppl = Ablation(ckpt, mode, (name,)).perplexity(windows)
            out.append(row(f"`{name}` inputs {mode.replace('_', '-')}, the rest per-tensor", ppl))
    out.append(row("all per-token", Ablation(ckpt, "per_token", KINDS).perplexity(windows)))
    out += ["", *step_lines(base.steps)]
    print("\n".join(out))
    return 0 if math.isfinite(ref) else 1


if __name__ == "__main__":
    raise SystemExit(main())
