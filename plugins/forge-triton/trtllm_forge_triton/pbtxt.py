"""Writing config.pbtxt files and checking them against Triton's own schema.

Configs are rendered from small dicts (inputs, outputs, parameters) rather than
from text templates with placeholders, then parsed into tritonclient's
``ModelConfig`` protobuf: a config Triton would reject never reaches the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.exporters import ExportSource


@dataclass(frozen=True)
class Io:
    """One input or output tensor of a model config."""

    name: str
    dtype: str  # Triton's TYPE_* name
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None

    def render(self, *, is_input: bool) -> str:
        fields = [f'name: "{self.name}"', f"data_type: {self.dtype}", f"dims: {list(self.dims)}"]
        if self.reshape is not None:
            fields.append(f"reshape: {{ shape: {list(self.reshape)} }}")
        if self.optional and is_input:
            fields.append("optional: true")
        return "  {\n    " + "\n    ".join(fields) + "\n  }"


def _ios(key: str, ios: Iterable[Io], *, is_input: bool) -> str:
    return f"{key} [\n" + ",\n".join(io.render(is_input=is_input) for io in ios) + "\n]"


def _parameters(params: Mapping[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{_escape(value)}" }} }}'
        for key, value in params.items()
    )


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def model_config(
    *,
    name: str,
    backend: str | None = None,
    platform: str | None = None,
    max_batch_size: int,
    inputs: Iterable[Io],
    outputs: Iterable[Io],
    parameters: Mapping[str, str] | None = None,
    decoupled: bool | None = None,
    instance_kind: str | None = None,
    extra: str = "",
) -> str:
    lines = [f'name: "{name}"']
    if backend:
        lines.append(f'backend: "{backend}"')
    if platform:
        lines.append(f'platform: "{platform}"')
    lines.append(f"max_batch_size: {max_batch_size}")
    if decoupled is not None:
        lines.append(f"model_transaction_policy {{ decoupled: {str(decoupled).lower()} }}")
    lines.append(_ios("input", inputs, is_input=True))
    lines.append(_ios("output", outputs, is_input=False))
    if instance_kind:
        lines.append(f"instance_group [ {{ count: 1 kind: {instance_kind} }} ]")
    if parameters:
        lines.append(_parameters(parameters))
    if extra:
        lines.append(extra.strip())
    return "\n".join(lines) + "\n"


def parse(text: str) -> Any:
    """The config as Triton's ``ModelConfig`` (raises on anything Triton would reject)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def write_config(model_dir: Path, text: str) -> Path:
    parsed = parse(text)  # validate before writing
    if parsed.name != model_dir.name:
        raise ValueError(f"config name {parsed.name!r} != directory {model_dir.name!r}")
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    return path


def model_name(source: ExportSource) -> str:
    """A Triton model name from the recipe's name (letters, digits, '-', '_')."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.name)
    return name or "forge_model"
