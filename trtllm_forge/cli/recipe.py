"""`forge recipe schema|show|check`: a recipe without building it."""

from __future__ import annotations

import typer

from trtllm_forge.cli.common import SUMMARIES, JsonOpt, RecipeArg, guard, print_json

app = typer.Typer(
    name="recipe",
    help=SUMMARIES["recipe"],
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("schema")
def recipe_schema() -> None:
    """Print the recipe JSON Schema (for editor validation, e.g. yaml-language-server)."""
    from trtllm_forge import api

    print_json(api.recipe_schema())


@app.command("show")
def recipe_show(recipe: RecipeArg, as_json: JsonOpt = False) -> None:
    """Validate RECIPE and print it with every default filled in."""
    from trtllm_forge import api

    def body() -> None:
        loaded = api.check(recipe=recipe, sources=False)  # shows a recipe, model or not
        doc = loaded.recipe.model_dump(mode="json")
        if as_json:
            print_json(doc)
        else:
            import yaml  # type: ignore[import-untyped, unused-ignore]  # no types-PyYAML

            print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), end="")

    guard(body, as_json)


@app.command("check")
def recipe_check(recipe: RecipeArg) -> None:
    """Validate RECIPE without building anything (exit 2 with file:line:col on error)."""
    from trtllm_forge import api

    guard(lambda: api.check(recipe=recipe))
    print(f"{recipe}: ok")
