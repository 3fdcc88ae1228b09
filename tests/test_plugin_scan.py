"""The registries' entry-point scan (plugin_hooks.entry_points_in) finds exactly what
importlib.metadata finds, while parsing only the distributions that name the group
(issue 11: the full scan ran on every `forge` start)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from trtllm_forge.plugin_hooks import PLUGIN_GROUP
from trtllm_forge.plugin_hooks import entry_points_in as _entry_points


def _triples(found: object) -> list[tuple[str, str, str]]:
    return sorted((e.name, e.value, e.group) for e in found)  # type: ignore[attr-defined]


@pytest.mark.parametrize("group", [PLUGIN_GROUP, "console_scripts", "no.such.group"])
def test_scan_of_this_venv_matches_importlib(group: str) -> None:
    assert _triples(_entry_points(group)) == _triples(entry_points(group=group))


def _dist(root: Path, folder: str, entry_points_txt: str | None) -> None:
    meta = root / folder
    meta.mkdir(parents=True)
    name, version = folder.removesuffix(".dist-info").split("-")
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entry_points_txt is not None:
        (meta / "entry_points.txt").write_text(entry_points_txt)


def test_the_first_distribution_of_a_name_hides_later_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = "forge.test.scan"
    first, later = tmp_path / "first", tmp_path / "later"
    _dist(first, "Demo.Pkg-1.0.dist-info", f"[{group}]\nold = demo:old\n")
    _dist(later, "demo_pkg-2.0.dist-info", f"[{group}]\nnew = demo:new\n")
    _dist(later, "other-1.0.dist-info", f"[console_scripts]\nx = o:x\n\n[{group}]\nb = o:b\n")
    _dist(later, "bare-1.0.dist-info", None)
    monkeypatch.setattr("sys.path", [str(first), str(tmp_path / "missing"), str(later)])
    found = _triples(_entry_points(group))
    assert found == _triples(entry_points(group=group))
    assert found == [("b", "o:b", group), ("old", "demo:old", group)]
