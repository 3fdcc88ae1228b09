"""Render docs/recipes.md from the schema, so the reference can never drift.

    python -m trtllm_forge.recipe.docs > docs/recipes.md

A test regenerates it and compares with the committed file.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from trtllm_forge.recipe import schema as s

INTRO = """\
# Recipe reference

A recipe is one YAML file: the single source of truth for one engine build.
Unknown keys are errors, every error names `file:line:col` and the field, and
`forge recipe schema` prints the JSON Schema (for editor validation, e.g. add
`# yaml-language-server: $schema=forge-recipe.schema.json` after
`forge recipe schema > forge-recipe.schema.json`). `forge recipe show RECIPE`
prints a recipe with every default filled in.

Relative paths in a recipe are relative to the recipe file's directory.

This page is generated from the schema by `python -m trtllm_forge.recipe.docs`.

```yaml
schema_version: 1
name: llama2-7b-int8wo
source: {hf: meta-llama/Llama-2-7b-hf, revision: main}
convert: {dtype: float16}
quantize: {method: int8_wo}
parallel: {tp: 2, pp: 1}
build: {backend: tensorrt, max_batch_size: 8, max_input_len: 1024, max_seq_len: 2048}
verify: {gates: {min_top1: 0.9, max_ppl_ratio: 1.05}}
```

Cross-checks made before any work: exactly one source kind; `max_input_len <
max_seq_len`; plugins valid for the backend; once the source's `config.json` is
readable, `tp` divides the attention heads, `tp` and the key/value heads divide
one another, and `pp` ≤ layers.

Which fields each stage's cache key reads: fetch — `source`; convert —
`convert.dtype`; calibrate — `quantize` (with the calibration text's and
tokenizer's digests; **not** `parallel`, so changing tp/pp reuses the
calibration); build — `parallel`, `build`; verify — `verify`.
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", s.Recipe),
    ("source", s.Source),
    ("convert", s.Convert),
    ("parallel", s.Parallel),
    ("build", s.Build),
    ("verify", s.Verify),
    ("verify.gates", s.Gates),
    ("quantize.calibration", s.Calibration),
]


def _type_name(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "").replace("trtllm_forge.recipe.schema.", "")
    text = text.replace(
        "Annotated[str, FieldInfo(annotation=NoneType, required=True, metadata=[MinLen(min_length=1)])]",
        "str",
    )
    text = text.replace("<class '", "").replace("'>", "")
    if text.startswith("dict["):
        return "mapping: name → str \\| bool"
    if "Annotated[" in text:
        text = text.split("Annotated[", 1)[0] + "str" + ("]" if text.startswith("list[") else "")
    return text.replace("|", "\\|")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value: Any = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(section defaults)"
    text = json.dumps(value, ensure_ascii=False)
    return f"`{text}`" if len(text) < 60 else "(see below)"


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        rows.append(
            f"| `{name}` | {_type_name(info)} | {_default(info)} | {info.description or ''} |"
        )
    return rows


def _doc(model: type[BaseModel]) -> str:
    return inspect.cleandoc(model.__doc__ or "")


def render() -> str:
    out = [INTRO]
    for title, model in SECTIONS:
        out += [f"## {title}", "", _doc(model), "", *_table(model), ""]
    out += [
        "## quantize",
        "",
        "Pick one `method`; each method takes the common fields below plus its own.",
        "",
        "Common fields:",
        "",
        *_table(s.NoQuant, skip=("method",)),
        "",
    ]
    for model in s.QUANTIZE_SECTIONS:
        common = tuple(n for n in model.model_fields if n not in s.method_fields(model))
        out += [f"### `method: {s.method_name(model)}`", "", _doc(model), ""]
        rows = _table(model, skip=common)
        out += [*(rows if len(rows) > 2 else ["(no extra fields)"]), ""]
    out += (
        ["## Default verify prompts", ""]
        + [f"- `{json.dumps(p)}`" for p in s.DEFAULT_PROMPTS]
        + [""]
    )
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")  # noqa: T201
