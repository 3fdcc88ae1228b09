"""What ``forge bench`` / ``forge run`` were pointed at, resolved to a loadable directory.

TARGET is a recipe (a .yaml/.yml file) or a directory:

* a recipe is built up to what the runtime needs — through the cache, so an engine that
  is already built costs a lookup and one that is not gets built first (progress on
  stderr): the build stage's engine for ``forge`` and ``genai``, the fetched Hugging Face
  snapshot for ``transformers``. Its tokenizer is the snapshot's.
* a directory is used as it is; its tokenizer is ``--tokenizer`` or, when the directory
  holds tokenizer files itself (an HF model dir, a genai folder), the directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trtllm_forge.context import RunContext
from trtllm_forge.errors import recipe_error

RECIPE_SUFFIXES = (".yaml", ".yml")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(frozen=True)
class Target:
    path: Path  # what the runner loads
    tokenizer_dir: Path | None  # where a tokenizer can be loaded from, when known
    recipe: Path | None = None


def resolve_target(
    target: Path, *, runtime: str, ctx: RunContext, tokenizer: Path | None = None
) -> Target:
    if target.is_file() and target.suffix in RECIPE_SUFFIXES:
        return _from_recipe(target, runtime, ctx, tokenizer)
    if not target.is_dir():
        raise recipe_error(
            f"{target} is neither a recipe (.yaml) nor a directory",
            hint="pass a recipe, a forge engine directory, an onnxruntime-genai model folder "
            "or a Hugging Face model directory",
        )
    if tokenizer is None and any((target / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = target
    return Target(target, tokenizer)


def _from_recipe(recipe: Path, runtime: str, ctx: RunContext, tokenizer: Path | None) -> Target:
    from trtllm_forge import api
    from trtllm_forge.stages.build import engine_dir
    from trtllm_forge.stages.fetch import snapshot_dir

    until = "fetch" if runtime == "transformers" else "build"
    artifacts = api.build(recipe=recipe, until=until, ctx=ctx).artifacts
    snapshot = snapshot_dir(artifacts["fetch"])
    path = snapshot if until == "fetch" else engine_dir(artifacts["build"])
    return Target(path, tokenizer or snapshot, recipe)


def require_tokenizer(target: Target, *, needed_for: str) -> Path:
    if target.tokenizer_dir is None:
        raise recipe_error(
            f"{needed_for}, and {target.path} holds no tokenizer",
            hint="name one with --tokenizer DIR (the model's Hugging Face directory), "
            "or pass the recipe instead of the engine",
        )
    return target.tokenizer_dir
