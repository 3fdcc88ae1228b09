"""tools/import_layers.py (run by `make lint`) fails on a cycle, an upward import and an
import by string in a real tree of files, and passes a tree without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "import_layers.py"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"trtllm_forge/__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60
    )


def test_a_cycle_an_upward_import_and_an_import_by_string_fail(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "trtllm_forge/store/__init__.py": "",
            # A cycle inside one layer, one side a deferred import inside a function.
            "trtllm_forge/store/a.py": "from trtllm_forge.store import b\n",
            "trtllm_forge/store/b.py": "def f():\n    from trtllm_forge.store.a import x\n",
            # The bottom layer importing the engine layer, relatively and by a string.
            "trtllm_forge/errors.py": "from .engine import run\n",
            "trtllm_forge/faults.py": (
                "import importlib\n\nMODULE = 'trtllm_forge.engine'\n"
                "importlib.import_module(MODULE)\n"
            ),
            "trtllm_forge/engine.py": "from trtllm_forge import errors\n",
        },
    )
    run = _check(root)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = set(run.stdout.splitlines())
    assert "cycle: trtllm_forge.store.a -> trtllm_forge.store.b -> trtllm_forge.store.a" in lines
    assert "cycle: trtllm_forge.engine -> trtllm_forge.errors -> trtllm_forge.engine" in lines
    up = "upward: trtllm_forge.errors -> trtllm_forge.engine"
    assert f"{Path('trtllm_forge/errors.py')}:1: {up}" in lines
    by_string = "by string: trtllm_forge.faults -> trtllm_forge.engine"
    assert f"{Path('trtllm_forge/faults.py')}:3: {by_string}" in lines
    assert len(lines) == 5, run.stdout  # and the faults -> engine upward import


def test_a_module_in_no_layer_fails(tmp_path: Path) -> None:
    run = _check(_tree(tmp_path, {"trtllm_forge/newthing.py": ""}))
    assert run.returncode == 1
    assert "no layer: trtllm_forge.newthing" in run.stdout


def test_downward_imports_pass(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "trtllm_forge/errors.py": "",
            "trtllm_forge/recipe.py": "from trtllm_forge.errors import x\n",
            "trtllm_forge/cli.py": (
                "import trtllm_forge.recipe\n\ndef main():\n    from trtllm_forge import api\n"
            ),
            "trtllm_forge/api.py": "from . import recipe\n",
        },
    )
    run = _check(root)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""


def test_docs_architecture_lists_the_declared_layers() -> None:
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("import_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up while defined
    spec.loader.exec_module(script)
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = [line.split("|")[2] for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    documented = [set(re.findall(r"`([\w.]+)`", row)) for row in rows]
    assert documented == [{name for name in layer if name} for layer in script.LAYERS]
