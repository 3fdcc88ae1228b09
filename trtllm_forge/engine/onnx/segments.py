"""Split a rank graph at its collective nodes so ONNX Runtime can run it.

The result is a *schedule*: an ordered list of steps, each either a segment (an
ONNX file of the nodes between two collectives) or a collective. The runtime
runs step k on every TP rank of a stage, then step k+1, keeping each rank's
values by name. Segment files sit next to the rank's data file and reference
the same weights by offset, so nothing is duplicated on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import helper, shape_inference

from trtllm_forge.engine.onnx.collectives import is_collective, node_attributes


@dataclass
class Step:
    """One schedule entry: a segment file, or a collective from ``inputs[0]`` to ``outputs[0]``."""

    kind: str  # "segment" | "collective"
    inputs: list[str]
    outputs: list[str]
    file: str | None = None  # segment file name (kind == "segment")
    op: str | None = None  # collective op type (kind == "collective")
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "segment":
            return {"segment": self.file, "inputs": self.inputs, "outputs": self.outputs}
        return {
            "collective": self.op,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "attrs": self.attrs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        if "segment" in data:
            return cls("segment", list(data["inputs"]), list(data["outputs"]), file=data["segment"])
        return cls(
            "collective",
            list(data["inputs"]),
            list(data["outputs"]),
            op=data["collective"],
            attrs=dict(data["attrs"]),
        )


def _groups(nodes: list[onnx.NodeProto]) -> list[list[onnx.NodeProto] | onnx.NodeProto]:
    """Consecutive runs of ordinary nodes, with each collective node standing alone."""
    out: list[list[onnx.NodeProto] | onnx.NodeProto] = []
    run: list[onnx.NodeProto] = []
    for node in nodes:
        if is_collective(node):
            if run:
                out.append(run)
                run = []
            out.append(node)
        else:
            run.append(node)
    if run:
        out.append(run)
    return out


def split_at_collectives(
    model: onnx.ModelProto, out_dir: Path, stem: str = "segment"
) -> list[Step]:
    """Write one ONNX file per segment into ``out_dir`` and return the schedule."""
    graph = model.graph
    typed = shape_inference.infer_shapes(model)
    types = {
        v.name: v
        for v in [
            *typed.graph.input,
            *typed.graph.value_info,
            *typed.graph.output,
            *graph.value_info,
        ]
    }
    initializers = {t.name: t for t in graph.initializer}
    graph_outputs = [o.name for o in graph.output]
    groups = _groups(list(graph.node))
    # Names each group reads, so a segment exports exactly what later steps need.
    reads = [_reads(g) for g in groups]
    steps: list[Step] = []
    for index, group in enumerate(groups):
        later = set().union(*reads[index + 1 :], graph_outputs)
        if isinstance(group, onnx.NodeProto):
            steps.append(
                Step(
                    "collective",
                    list(group.input),
                    list(group.output),
                    op=group.op_type,
                    attrs=node_attributes(group),
                )
            )
            continue
        produced = [o for node in group for o in node.output]
        made_here = set(produced)
        inputs = [
            name for name in reads[index] if name not in initializers and name not in made_here
        ]
        outputs = [name for name in produced if name in later]
        file = f"{stem}_{sum(s.kind == 'segment' for s in steps):03d}.onnx"
        segment = helper.make_graph(
            group,
            f"{graph.name}.{file}",
            [types[name] for name in inputs],
            [types[name] for name in outputs],
            [initializers[name] for name in reads[index] if name in initializers],
        )
        seg_model = helper.make_model(
            segment, opset_imports=[o for o in model.opset_import if o.domain == ""]
        )
        seg_model.ir_version = model.ir_version
        onnx.save_model(seg_model, out_dir / file)
        steps.append(Step("segment", inputs, outputs, file=file))
    return steps


def _reads(group: list[onnx.NodeProto] | onnx.NodeProto) -> dict[str, None]:
    nodes = [group] if isinstance(group, onnx.NodeProto) else group
    return {name: None for node in nodes for name in node.input if name}
