"""Recipes: strict schema, YAML loading with line:col, cross-field checks."""

from trtllm_forge.recipe.load import LoadedRecipe, load_recipe
from trtllm_forge.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "load_recipe"]
