"""trtllm_forge/registry.py: the one registry type behind families, backends, exporters and
remote schemes. Plugins are real installed distributions (a dist-info folder on sys.path
declaring an entry point), read by a subprocess so the test's own interpreter stays clean."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.registry import Registry


def test_a_miss_lists_the_names_and_suggests_a_close_one() -> None:
    registry: Registry[int] = Registry("demo", "colour", deferred={"green": lambda: 2})
    registry.add("red", 1)
    with pytest.raises(ForgeError) as caught:
        registry.get("gren")
    assert caught.value.code == ExitCode.RECIPE
    assert caught.value.message == "unknown colour 'gren' (did you mean green?)"
    assert caught.value.hint == "known colours: green, red"
    with pytest.raises(ForgeError) as far:
        registry.get("blue")
    assert far.value.message == "unknown colour 'blue'"


def test_deferred_entries_load_only_when_asked_for() -> None:
    loaded: list[str] = []

    def load() -> str:
        loaded.append("heavy")
        return "module"

    registry: Registry[str] = Registry("demo", "backend", deferred={"heavy": load})
    assert registry.knows("heavy") and registry.names() == ["heavy"]
    assert loaded == []
    assert registry.get("heavy") == registry.get("heavy") == "module"
    assert loaded == ["heavy"]


def test_a_name_registered_twice_is_refused_unless_it_is_the_same_value() -> None:
    def first() -> None: ...

    def second() -> None: ...

    registry: Registry[object] = Registry("demo", "exporter", deferred={"x": lambda: first})
    registry.add("x", first)  # the same value again: harmless
    with pytest.raises(ForgeError, match="exporter 'x' is registered twice") as caught:
        registry.add("x", second)
    assert "(first and second)" in caught.value.message
    assert caught.value.hint == "uninstall one of the plugins that provide it"


def _install_plugin(root: Path, body: str) -> None:
    (root / "forge_registry_demo.py").write_text(textwrap.dedent(body))
    info = root / "forge_registry_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: forge-registry-demo\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[forge.test.registry]\ndemo = forge_registry_demo:register\n"
    )


def _run(root: Path, script: str) -> str:
    code = f"import sys\nsys.path.insert(0, {str(root)!r})\n" + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout


def test_plugins_register_by_kind_and_are_read_only_on_a_miss(tmp_path: Path) -> None:
    _install_plugin(
        tmp_path,
        """
        import sys
        sys.modules["forge_registry_demo_ran"] = sys  # marks that the hook ran

        def register(registry):
            if registry.kind == "colours":
                registry.add("violet", 7)
        """,
    )
    out = _run(
        tmp_path,
        """
        import json, sys
        from trtllm_forge.registry import Registry
        colours = Registry("colours", "colour", plugin_group="forge.test.registry")
        colours.add("red", 1)
        hit = colours.get("red"), "forge_registry_demo_ran" in sys.modules
        other = Registry("sizes", "size", plugin_group="forge.test.registry")
        print(json.dumps([hit, colours.get("violet"), colours.names(), other.names()]))
        """,
    )
    assert json.loads(out) == [[1, False], 7, ["red", "violet"], []]


def test_a_broken_plugin_is_a_dependency_error_naming_it(tmp_path: Path) -> None:
    _install_plugin(tmp_path, "def register(registry):\n    raise RuntimeError('boom')\n")
    out = _run(
        tmp_path,
        """
        from trtllm_forge.errors import ForgeError
        from trtllm_forge.registry import Registry
        registry = Registry("colours", "colour", plugin_group="forge.test.registry")
        try:
            registry.get("violet")
        except ForgeError as exc:
            print(int(exc.code), exc.message)
        """,
    )
    assert out.startswith("4 plugin 'demo' (forge.test.registry) failed to load: boom")
