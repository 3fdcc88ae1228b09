"""`forge export trtllm-ckpt|hf|triton`: a recipe's artifact in another tool's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trtllm_forge.cli.common import (
    SUMMARIES,
    JsonOpt,
    OverwriteDestOpt,
    RecipeArg,
    guard,
    print_json,
)

app = typer.Typer(
    name="export",
    help=SUMMARIES["export"],
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("trtllm-ckpt")
def export_trtllm_ckpt(
    recipe: RecipeArg,
    dest: Annotated[
        Path, typer.Argument(help="Empty directory to write config.json + rank*.safetensors into.")
    ],
    overwrite: OverwriteDestOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export RECIPE's per-rank TensorRT-LLM checkpoint (for `trtllm-build --checkpoint_dir`)."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.export_trtllm_checkpoint(recipe=recipe, dest=dest, overwrite=overwrite)
        if as_json:
            print_json({"ok": True, **doc})
        else:
            print(
                f"wrote {len(doc['files'])} files (tp={doc['tp']}, pp={doc['pp']}) to {doc['dest']}"
            )

    guard(body, as_json)


FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="modelopt or compressed-tensors (default: the recipe's build.format).",
    ),
]


@app.command("hf")
def export_hf(
    recipe: RecipeArg,
    dest: Annotated[Path, typer.Argument(help="Empty directory to write the model folder into.")],
    format: FormatOpt = None,
    overwrite: OverwriteDestOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export RECIPE's quantization as a Hugging Face folder (ModelOpt's unified format
    or compressed-tensors) for TensorRT-LLM, vLLM, SGLang or transformers. A quantization
    the format cannot carry exits 2 before anything is built."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.export_hf(recipe=recipe, dest=dest, format=format, overwrite=overwrite)
        if as_json:
            print_json({"ok": True, **doc})
        else:
            print(
                f"wrote {len(doc['files'])} files ({doc['target']}, {doc['format'] or 'unquantized'}"
                f", KV {doc['kv_cache'] or 'none'}) to {doc['dest']}"
            )

    guard(body, as_json)


@app.command("triton")
def export_triton(
    recipe: RecipeArg,
    dest: Annotated[
        Path, typer.Argument(help="Empty directory to write the model repository into.")
    ],
    overwrite: OverwriteDestOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a Triton Inference Server model repository for RECIPE's artifact (needs the
    triton plugin: pip install 'trtllm-forge[triton]'). See docs/deploy.md."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.export_triton(recipe=recipe, dest=dest, overwrite=overwrite)
        if as_json:
            print_json({"ok": True, **doc})
        else:
            print(
                f"wrote a {doc['layout']} model repository ({', '.join(doc['models'])}) to {doc['dest']}"
            )

    guard(body, as_json)
