"""Load a recipe file: safe YAML → located nodes → strict schema → cross-checks.

Every failure is a ForgeError with ``file:line:col`` and the dotted field path,
so a user can jump straight to the mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # no types-PyYAML in the lock
from pydantic import ValidationError

from trtllm_forge.errors import Location, recipe_error, source_error
from trtllm_forge.recipe.schema import Recipe
from trtllm_forge.userfiles import UnsafeFile, pseudo_file_problem, read_regular

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 32


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: Path  # absolute path of the recipe file
    data: dict[str, Any]  # the raw mapping as written
    root: yaml.Node  # composed YAML node tree (for locating fields)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def locate(self, field: str) -> Location:
        """The ``file:line:col`` of a dotted field (or its nearest present parent)."""
        return locate_field(self.path, self.root, tuple(field.split(".")), field)

    def resolve_path(self, value: str, field: str) -> Path:
        """A path from the recipe, relative to the recipe file's directory."""
        if "\x00" in value:
            raise recipe_error("path contains a NUL byte", location=self.locate(field))
        return (self.base_dir / Path(value).expanduser()).resolve()

    def regular_file(self, value: str, field: str, *, what: str, hint: str) -> Path:
        """``resolve_path`` for a file forge will read: a missing, non-regular (a FIFO or
        /dev/zero would be read forever) or unreadable file is a source error at ``field``."""
        path = self.resolve_path(value, field)
        try:
            # /proc/self/environ passes is_file(): the environment, tokens included,
            # must never be read as calibration or evaluation text.
            problem = pseudo_file_problem(path)
            if problem is None and path.is_file():
                with path.open("rb"):
                    return path
            problem = problem or ("is not a regular file" if path.exists() else "does not exist")
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        raise source_error(f"{what} {problem}: {path}", hint=hint, location=self.locate(field))


def load_recipe(path: str | Path) -> LoadedRecipe:
    path = Path(path)
    text = _read_text(path)
    root = _compose(text, path)
    data = _construct(root, path)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, path, root) from None
    return LoadedRecipe(recipe=recipe, path=path.resolve(), data=data, root=root)


def _read_text(path: Path) -> str:
    try:
        data = read_regular(path, limit=MAX_RECIPE_BYTES)
    except FileNotFoundError:
        raise source_error(f"recipe file not found: {path}", hint="check the path") from None
    except UnsafeFile as exc:
        if exc.reason == "is a directory":
            raise recipe_error(f"{path} is a directory, not a recipe file") from None
        raise recipe_error(
            f"{path}: recipe {exc.reason}", hint="give the path of a recipe YAML file"
        ) from None
    except OSError as exc:
        raise source_error(
            f"cannot read recipe {path}: {exc.strerror or exc}", hint="check its permissions"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise recipe_error(f"{path}: recipe is not UTF-8 text ({exc.reason})") from None


def _mark_location(path: Path, mark: Any, field: str | None = None) -> Location:
    if mark is None:
        return Location(str(path), 1, 1, field)
    return Location(str(path), mark.line + 1, mark.column + 1, field)


def _compose(text: str, path: Path) -> yaml.Node:
    """Parse to a node tree. Aliases are refused: they are how 'billion laughs' bombs
    work, and a recipe never needs them."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise recipe_error(
                    "YAML aliases (*name) are not allowed in recipes",
                    hint="write the value out in full",
                    location=_mark_location(path, event.start_mark),
                )
            # Depth is checked on the (iterative) event stream: yaml.compose recurses
            # once per level and would hit Python's recursion limit on `[[[[...`.
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(
                event, yaml.CollectionEndEvent
            )
            if depth > MAX_DEPTH + 1:
                raise recipe_error(
                    f"recipe nests deeper than {MAX_DEPTH} levels",
                    location=_mark_location(path, event.start_mark),
                )
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise recipe_error(
            f"invalid YAML: {exc.problem or exc.context}",
            hint="check indentation, colons and quoting near this position",
            location=_mark_location(path, mark),
        ) from None
    except yaml.YAMLError as exc:
        raise recipe_error(f"invalid YAML: {exc}", location=_mark_location(path, None)) from None
    if root is None:
        raise recipe_error(
            "recipe is empty",
            hint="start from recipes/tiny-llama.yaml",
            location=_mark_location(path, None),
        )
    _check_shape(root, path, depth=0)
    return root


def _check_shape(node: yaml.Node, path: Path, depth: int) -> None:
    """Reject deep nesting and duplicate keys before constructing anything."""
    if depth > MAX_DEPTH:
        raise recipe_error(
            f"recipe nests deeper than {MAX_DEPTH} levels",
            location=_mark_location(path, node.start_mark),
        )
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                raise recipe_error(
                    f"duplicate key '{name}'",
                    hint="remove one of them",
                    location=_mark_location(path, key.start_mark, name),
                )
            seen.add(name)
            _check_shape(value, path, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_shape(item, path, depth + 1)


def _construct(root: yaml.Node, path: Path) -> dict[str, Any]:
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(root)
    except yaml.constructor.ConstructorError as exc:
        raise recipe_error(
            f"unsupported YAML: {exc.problem}",
            hint="recipes may only contain plain mappings, lists, strings, numbers and booleans",
            location=_mark_location(path, exc.problem_mark),
        ) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise recipe_error(
            "a recipe must be a YAML mapping (key: value pairs)",
            location=_mark_location(path, root.start_mark),
        )
    return data


def _first_error(exc: ValidationError, path: Path, root: yaml.Node) -> Exception:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, err["ctx"]["discriminator"].strip("'"))  # point at `method:` itself
    field = _dotted(loc, root)
    message = _message(err)
    more = len(exc.errors()) - 1
    hint = _hint(err)
    if more:
        hint = f"{hint + '; ' if hint else ''}{more} more error(s) after this one"
    at_key = err["type"] == "extra_forbidden"
    return recipe_error(
        message, hint=hint, location=locate_field(path, root, loc, field, at_key=at_key)
    )


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown value {err['ctx']['tag']!r}; expected one of {err['ctx']['expected_tags']}"
    if kind == "union_tag_not_found":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _hint(err: ErrorDetails) -> str | None:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "check the spelling; `forge recipe schema` lists every field"
    if kind == "union_tag_invalid" or kind == "literal_error":
        return "see docs/recipes.md for the allowed values"
    if kind == "union_tag_not_found":
        return "add `method:` (e.g. `method: none`)"
    return None


def _dotted(loc: tuple[Any, ...], root: yaml.Node) -> str:
    """Dotted recipe path, dropping the discriminator tags pydantic inserts for unions."""
    parts: list[str] = []
    node: yaml.Node | None = root
    for part in loc:
        child = _child(node, part)
        if (
            child is None
            and isinstance(node, yaml.MappingNode)
            and isinstance(part, str)
            and _is_tag(part)
        ):
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
        node = child
    return ".".join(parts).replace(".[", "[")


def _is_tag(part: str) -> bool:
    from trtllm_forge.recipe.schema import QUANT_METHODS

    return part in QUANT_METHODS or part.startswith("function-")


def _child(node: yaml.Node | None, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                return value
    elif (
        isinstance(node, yaml.SequenceNode)
        and isinstance(part, int)
        and 0 <= part < len(node.value)
    ):
        return node.value[part]
    return None


def _key_node(node: yaml.Node | None, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, _value in node.value:
            if key.value == part:
                return key
    return None


def locate_field(
    path: Path, root: yaml.Node, loc: tuple[Any, ...], field: str | None, *, at_key: bool = False
) -> Location:
    """Walk ``loc`` down the node tree and stop at the deepest node that exists.

    A bad value points at the value; an unknown key (``at_key``) at the key; a
    missing field at the mapping that should contain it.
    """
    node: yaml.Node = root
    for part in loc:
        child = _child(node, part)
        if child is None:
            if isinstance(part, str) and _is_tag(part):
                continue  # a union tag pydantic inserted, not a YAML key
            break
        if at_key and part == loc[-1]:
            node = _key_node(node, part) or child
            break
        node = child
    return _mark_location(path, node.start_mark, field)
