"""The import graph of trtllm_forge: no cycles, no upward imports between layers, no
imports by string (``make lint`` runs it; docs/architecture.md says why the layers are
what they are).

Every ``import`` and ``from … import`` counts, at module level or inside a function
(a deferred import still couples the modules). A string that names a module — a
literal such as ``"trtllm_forge.quant.awq"`` or an f-string such as
``f"trtllm_forge.quant.{name}"``, the argument of an ``importlib.import_module`` —
counts too, and is reported as an import by string: such a dependency hides from
readers and from type checkers.
Standard library only, so it runs before (and without) the package's dependencies.

    python tools/import_layers.py [ROOT]    # ROOT: a folder holding trtllm_forge/
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "trtllm_forge"

# Bottom to top: a module may import its own layer and the layers below it, never one
# above. A name is a module or a package (everything below it); the longest name that
# matches a module decides its layer.
# "" is the package's own __init__.
LAYERS: tuple[tuple[str, ...], ...] = (
    # What everything may use: errors, settings, fault points, extension hooks, data files.
    # rules: the cross-field rules between recipe settings and model sizes (numbers only);
    # registry: the one registry type every extension point uses.
    (
        "",
        "errors",
        "faults",
        "userfiles",
        "thirdparty",
        "context",
        "plugin_hooks",
        "registry",
        "exporters",
        "rules",
    ),
    ("store", "recipe"),  # the artifact store; the recipe schema and loader
    # The stage contract, stage keys and the runner: stages come from the caller, so the
    # pipeline's core knows no stage and no model.
    ("pipeline",),
    ("models",),  # model families: name tables, no conversion
    ("checkpoint", "sources"),  # the TensorRT-LLM checkpoint; reading a source model
    ("quant", "quickeval"),  # quantization of a checkpoint; its perplexity change
    ("engine",),  # lowering, building and running engines; verify
    ("hf", "inspect"),  # quantized Hugging Face folders; `forge inspect`
    # What is checked (and estimated) before any stage runs; cache push/pull of a recipe.
    ("pipeline.preflight", "pipeline.model_checks", "pipeline.estimate", "pipeline.cache_sync"),
    ("stages",),  # the five stages (stages.hf_build: the build stage of backend hf)
    ("api",),  # hands the stages to the runner
    ("bench",),  # benchmark targets, over the api
    ("cli", "__main__", "ui"),
)

# Known problems, each with what fixes it (none left). A
# new problem fails the check; so does an entry here that no longer occurs.
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. trtllm_forge.engine.spec
    target: str  # the imported module
    line: int
    by_string: bool = False


@dataclass(frozen=True)
class Graph:
    modules: frozenset[str]
    imports: tuple[Import, ...]
    root: Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_graph(root: Path, package: str = PACKAGE) -> Graph:
    files = {module_name(root, path): path for path in sorted((root / package).rglob("*.py"))}
    modules = frozenset(files)
    imports = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for found in _imports_in(tree, name, is_package, modules, package):
            imports.append(found)
    return Graph(modules, tuple(imports), root)


def _imports_in(
    tree: ast.AST, name: str, is_package: bool, modules: frozenset[str], package: str
) -> Iterator[Import]:
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolved(name, alias.name, node.lineno, modules, package)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(here, node.module, node.level)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in modules else base
                yield from _resolved(name, target, node.lineno, modules, package)
        elif (named := _module_in_string(node, modules, package)) is not None:
            yield from _resolved(name, named, node.lineno, modules, package, by_string=True)


def _absolute(here: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = here.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _module_in_string(node: ast.AST, modules: frozenset[str], package: str) -> str | None:
    """The module a string names: a literal equal to a module's dotted name, or an
    f-string starting with a package's name and a dot (``f"{package}.x.{name}"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value if node.value in modules and node.value != package else None
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            prefix = head.value.rpartition(".")[0]
            if prefix.startswith(package) and prefix in modules:
                return prefix
    return None


def _resolved(
    source: str,
    target: str,
    line: int,
    modules: frozenset[str],
    package: str,
    *,
    by_string: bool = False,
) -> Iterator[Import]:
    if target != package and not target.startswith(package + "."):
        return
    while target not in modules and "." in target:  # `import a.b.name` of a non-module name
        target = target.rpartition(".")[0]
    if target != source or by_string:
        yield Import(source, target, line, by_string)


def layer_of(module: str, package: str = PACKAGE) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    relative = module.removeprefix(package).lstrip(".")
    for index, names in enumerate(LAYERS):
        for layer_name in names:
            if relative == layer_name or relative.startswith(layer_name + "."):
                if best is None or len(layer_name) > best[0]:
                    best = (len(layer_name), index)
    return None if best is None else best[1]


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    edges: dict[str, set[str]] = {module: set() for module in graph.modules}
    for found in graph.imports:
        edges[found.source].add(found.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(edges[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    return sorted(components)


@dataclass(frozen=True)
class Problem:
    what: str  # "cycle", "upward", "by string" or "no layer"
    modules: tuple[str, ...]  # the cycle's members, or the importing and imported module
    where: str  # file:line, or "" for a cycle

    @property
    def key(self) -> str:
        return f"{self.what}: {' -> '.join(self.modules)}"

    def __str__(self) -> str:
        return f"{self.where}: {self.key}" if self.where else self.key


def problems(graph: Graph, package: str = PACKAGE) -> list[Problem]:
    """Every cycle, upward import, import by string and module without a layer."""
    out = [Problem("cycle", (*members, members[0]), "") for members in cycles(graph)]
    for module in sorted(graph.modules):
        if module != package and layer_of(module, package) is None:
            out.append(Problem("no layer", (module,), _path(graph, module)))
    for found in graph.imports:
        where = f"{_path(graph, found.source)}:{found.line}"
        if found.by_string:
            out.append(Problem("by string", (found.source, found.target), where))
        low, high = layer_of(found.target, package), layer_of(found.source, package)
        if low is not None and high is not None and low > high:
            out.append(Problem("upward", (found.source, found.target), where))
    return list(dict.fromkeys(out))


def _path(graph: Graph, module: str) -> str:
    path = graph.root.joinpath(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return str(file.relative_to(graph.root))


def main(argv: list[str]) -> int:
    """Checks ``argv[1]`` (a folder holding trtllm_forge/), or this repository, where the
    problems in PENDING are let through while they occur."""
    repository = Path(__file__).resolve().parents[1]
    root = Path(argv[1]) if len(argv) > 1 else repository
    found = problems(read_graph(root))
    pending = PENDING if root.resolve() == repository else {}
    failing = [problem for problem in found if problem.key not in pending]
    stale = [key for key in pending if key not in {problem.key for problem in found}]
    lines = [str(problem) for problem in failing]
    lines += [f"{key}: fixed; remove it from PENDING in tools/import_layers.py" for key in stale]
    if len(found) > len(failing):
        lines.append(f"({len(found) - len(failing)} known problem(s) in PENDING)")
    if lines:
        print("\n".join(lines))  # noqa: T201 (a command-line tool's report)
    return 1 if failing or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
