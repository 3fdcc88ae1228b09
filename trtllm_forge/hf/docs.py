"""The method × format table of docs/outputs.md, rendered from the format records.

    python -m trtllm_forge.hf.docs   # prints the table; paste between the markers

A test keeps the committed table equal to this output.
"""

from __future__ import annotations

from trtllm_forge.quant.records import method_table

BEGIN = "<!-- method-table:begin (python -m trtllm_forge.hf.docs) -->"
END = "<!-- method-table:end -->"


def render_table() -> str:
    lines = [
        "| method | format | ModelOpt unified (`format: modelopt`) | compressed-tensors |",
        "|---|---|---|---|",
    ]
    for method, fmt, modelopt, compressed in method_table():
        lines.append(f"| {method} | `{fmt}` | {modelopt} | {compressed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_table())  # noqa: T201
