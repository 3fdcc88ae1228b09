"""Stage keys and the diff ``forge plan`` shows for a miss."""

from __future__ import annotations

from typing import Any

from trtllm_forge.pipeline.stage import KeyInputs
from trtllm_forge.store.digest import digest_json


def key_document(
    stage: str, version: str, inputs: KeyInputs, upstream: dict[str, str]
) -> dict[str, Any]:
    return {
        "stage": stage,
        "version": version,
        "fields": inputs.fields,
        "upstream": upstream,
        "tools": inputs.tools,
        "extra": inputs.extra,
    }


def stage_key(document: dict[str, Any]) -> str:
    return digest_json(document)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def changed_inputs(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Human names of key inputs that differ, e.g. ``convert.dtype`` or ``upstream fetch``."""
    if previous is None:
        return []
    before, after = flatten(previous), flatten(current)
    names = []
    for name in sorted(set(before) | set(after)):
        if before.get(name) == after.get(name):
            continue
        section, _, rest = name.partition(".")
        if section == "fields":
            names.append(rest)
        elif section == "upstream":
            names.append(f"upstream {rest}")
        elif section == "tools":
            names.append(f"tool version {rest}")
        else:
            names.append(rest or section)
    return names
