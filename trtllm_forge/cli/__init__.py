"""The `forge` command line: one module per command group, each only parsing its
arguments, calling :mod:`trtllm_forge.api` and rendering the result. Every typer import
of forge is under this package; errors are rendered by :mod:`trtllm_forge.cli.common`
(exit codes listed there)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from trtllm_forge.cli.common import STATE
from trtllm_forge.cli.lazy import LazyGroup

app = typer.Typer(
    name="forge",
    help="Turn Hugging Face LLM checkpoints into cached, verified, quantized inference engines.\n\n"
    "Start with:  forge build recipes/tiny-llama.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=LazyGroup,  # each command's module is imported when it runs (cli/lazy.py)
)


def _show_version(value: bool) -> None:
    if value:
        from trtllm_forge import __version__

        print(f"forge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Show tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    STATE["verbose"] = verbose or os.environ.get("FORGE_DEBUG", "") not in ("", "0")


def main() -> None:
    # Third-party tqdm bars would interleave with forge's own progress display;
    # forge reports long work through its Progress sink instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # pydantic looks for plugins by scanning every installed distribution's entry points when
    # it builds its first validator; forge's CLI validates only its own models, and that scan
    # is a measurable part of a no-op build's start-up (docs/performance.md).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from trtllm_forge.thirdparty import stand_in_pydantic_plugin_loader

    stand_in_pydantic_plugin_loader()  # so the disabled plugins cost no import either
    # torch compiles kernels for ModelOpt's quantizers into an inductor cache, /tmp by
    # default: it goes under FORGE_HOME so a build writes nothing outside the store.
    from trtllm_forge.context import forge_home

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(forge_home() / "torchinductor"))
    app()
