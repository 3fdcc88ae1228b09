"""`forge inspect`: what an engine, a checkpoint or any artifact holds, for people."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trtllm_forge.cli.common import SUMMARIES, JsonOpt, console, guard, human, print_json

app = typer.Typer(rich_markup_mode=None)


@app.command(short_help=SUMMARIES["inspect"])
def inspect(
    target: Annotated[
        str, typer.Argument(help="Engine dir, checkpoint dir, artifact dir, or key prefix.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Describe an engine (I/O, shapes, profiles, quantization, ranks, provenance), a
    checkpoint (config, tensors per rank) or any artifact (its manifest)."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.inspect(target=target)
        if as_json:
            print_json({"ok": True, **doc})
        else:
            _print_inspection(doc)

    guard(body, as_json)


def _print_inspection(doc: dict[str, Any]) -> None:
    """Human view of `forge inspect`; `--json` has everything."""
    out = console()
    out.print(f"[bold]{doc['kind']}[/bold]  {doc['path']}")
    art = doc.get("artifact")
    if art:
        _print_artifact(out, art)
    if "engine" in doc:
        _print_engine(out, doc["engine"])
    if "checkpoint" in doc:
        _print_checkpoint(out, doc["checkpoint"])
    if "hf_folder" in doc:
        _print_hf_folder(out, doc["hf_folder"])


def _print_artifact(out: Any, art: dict[str, Any]) -> None:
    out.print(
        f"artifact: stage {art['stage']}, key {art['key']}, {art['files']} files, "
        f"{human(art['bytes'])}, built in {art['seconds']}s"
    )
    if art.get("external_root"):
        out.print(f"references: {art['external_root']}")
    fields = (art.get("recipe") or {}).get("fields") or {}
    for name, value in fields.items():
        out.print(f"  {name} = {value}")
    for tool, version in (art.get("tools") or {}).items():
        out.print(f"  [dim]{tool} {version}[/]")


def _print_hf_folder(out: Any, info: dict[str, Any]) -> None:
    out.print(
        f"Hugging Face folder: {info.get('architecture')}, format {info['format']}, "
        f"quant_algo {info.get('quant_algo') or 'none'}, group size {info.get('group_size')}, "
        f"KV cache {info.get('kv_cache') or 'none'}"
    )
    out.print(f"excluded modules: {', '.join(info.get('excluded_modules') or []) or 'none'}")
    if info.get("serving"):
        out.print(f"serving hint: {info['serving']}")


def _quantization_text(quant: dict[str, Any] | None) -> str:
    """What is quantized, or "none": an unquantized engine's config still carries
    TensorRT-LLM's default group_size 128, which `inspect` used to show as if it applied."""
    quant = quant or {}
    if not (quant.get("quant_algo") or quant.get("kv_cache_quant_algo")):
        return "none"
    return str({k: v for k, v in quant.items() if v not in (None, False, [])})


def _print_engine(out: Any, eng: dict[str, Any]) -> None:
    mapping = eng.get("mapping", {})
    out.print(
        f"engine: backend {eng['backend']}, tp {mapping.get('tp_size')}, pp {mapping.get('pp_size')}, "
        f"quantization {_quantization_text(eng.get('quantization'))}, limits {eng.get('limits')}, "
        f"{human(eng['total_bytes'])}"
    )
    if eng.get("profiles"):
        out.print(f"profiles: {eng['profiles']}")
    for rank in eng.get("ranks", []):
        files = ", ".join(f"{name} ({human(size)})" for name, size in rank["files"].items())
        out.print(
            f"rank {rank['rank']} (tp {rank['tp_rank']}, pp {rank['pp_rank']}, layers {rank['layers']}, "
            f"{rank['segments']} segment(s), {rank['collectives']} collective(s)): {files}"
        )
    first = (eng.get("ranks") or [None])[0]
    if first:
        out.print(_io_table(first))
    out.print(f"provenance: {eng.get('provenance')}")


def _io_table(rank: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="rank 0 graph inputs / outputs")
    for col in ("", "name", "dtype", "shape"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for io in rank[kind]:
            table.add_row(kind[:-1], io["name"], io["dtype"], str(io["shape"]))
    return table


def _print_checkpoint(out: Any, ckpt: dict[str, Any]) -> None:
    config = ckpt.get("config", {})
    out.print(
        f"checkpoint: {config.get('architecture')} dtype {config.get('dtype')}, "
        f"mapping {ckpt.get('mapping')}, quantization {_quantization_text(ckpt.get('quantization'))}, "
        f"{human(ckpt['total_bytes'])}"
    )
    for rank in ckpt.get("ranks", []):
        out.print(
            f"rank {rank['rank']} (tp {rank['tp_rank']}, pp {rank['pp_rank']}, layers {rank['layers']}): "
            f"{rank['file']} {human(rank['file_bytes'])}, {rank['tensor_count']} tensors, dtypes {rank['dtypes']}"
        )
