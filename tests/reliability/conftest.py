"""Fixtures of the reliability tier: a tiny model, its recipe, and one
uninterrupted reference build (the oracle every crash/concurrency test
compares against), run through the real CLI.

Stages still being wired may not run yet; the tier covers every stage that
builds when it runs (``Reference.until``) and says which one it stopped at.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.harness import STAGES, Run, build_results, forge, store_entries, tiny_recipe


@dataclass(frozen=True)
class Reference:
    model: Path
    recipe: Path
    until: str  # the last stage that builds today
    stopped: str | None  # why the next stage does not (None when all do)
    home: Path
    results: dict[str, tuple[str, str]]  # stage → (key, content digest)
    entries: dict[tuple[str, str], str]  # every artifact, sub-artifacts included
    points: list[str]  # fault points an uninterrupted build passes, in order
    seconds: float
    # Artifacts whose bytes differed between two uninterrupted builds (a reproducibility
    # bug, reported by its own test); other tests compare only their keys.
    unstable: frozenset[tuple[str, str]]

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES[: STAGES.index(self.until) + 1]

    def stable(self, entries: dict[tuple[str, str], str]) -> dict[tuple[str, str], str | None]:
        """``entries`` with the content digests of unstable artifacts blanked out."""
        return {k: (None if k in self.unstable else v) for k, v in entries.items()}

    def stable_results(self, results: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str | None]]:
        unstable_stages = {stage for stage, _key in self.unstable}
        return {s: (k, None if s in unstable_stages else d) for s, (k, d) in results.items()}


@pytest.fixture(scope="session")
def rel_model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("rel-model") / "llama"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


@pytest.fixture(scope="session")
def reference(rel_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    work = tmp_path_factory.mktemp("rel-reference")
    recipe = tiny_recipe(work / "recipe.yaml", rel_model)
    until, stopped = _farthest_stage(work / "probe-home", recipe)
    probe = store_entries(work / "probe-home")  # a second uninterrupted build, stage by stage
    home = work / "home"
    points_file = work / "points.txt"
    run = forge(home, "build", str(recipe), "--until", until, "--json",
                env={"FORGE_FAULT_LIST": str(points_file)})
    entries = store_entries(home)
    unstable = frozenset(k for k, v in entries.items() if probe.get(k, v) != v)
    return Reference(model=rel_model, recipe=recipe, until=until, stopped=stopped, home=home,
                     results=build_results(run), entries=entries,
                     points=points_file.read_text().split(), seconds=run.seconds, unstable=unstable)


def _farthest_stage(home: Path, recipe: Path) -> tuple[str, str | None]:
    last: str | None = None
    for stage in STAGES:
        run: Run = forge(home, "build", str(recipe), "--until", stage, "--json")
        if run.code != 0:
            assert last is not None, f"even fetch fails on the tiny model: {run.text}"
            return last, f"{stage}: exit {run.code}: {_error_message(run)}"
        last = stage
    assert last is not None
    return last, None


def _error_message(run: Run) -> str:
    try:
        return str(run.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return run.text.strip().splitlines()[-1][:200] if run.text.strip() else "(no output)"
