"""Fixtures of the reliability tier: a tiny model, its recipe, and one
uninterrupted reference build (the oracle every crash/concurrency test
compares against), run through the real CLI.

Stages still being wired may not run yet; the tier covers every stage that
builds when it runs (``Reference.until``) and says which one it stopped at.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.harness import (
    REAL_QUANTIZE,
    ROOT,
    STAGES,
    Run,
    build_results,
    forge,
    store_entries,
    tiny_recipe,
)


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

    def entries_until(self, stage: str) -> dict[tuple[str, str], str]:
        """The reference artifacts of ``stage`` and the stages before it (sub-artifacts included)."""
        keys = {self.results[s][0] for s in STAGES[: STAGES.index(stage) + 1]}
        for s in STAGES[: STAGES.index(stage) + 1]:
            manifest = json.loads(
                (
                    self.home
                    / "artifacts"
                    / s
                    / self.results[s][0].split(":", 1)[1]
                    / "manifest.json"
                ).read_text()
            )
            keys |= set(dict(manifest.get("uses") or {}).values())
        return {k: v for k, v in self.entries.items() if k[1] in keys}

    def stable(self, entries: dict[tuple[str, str], str]) -> dict[tuple[str, str], str | None]:
        """``entries`` with the content digests of unstable artifacts blanked out."""
        return {k: (None if k in self.unstable else v) for k, v in entries.items()}

    def stable_results(
        self, results: dict[str, tuple[str, str]]
    ) -> dict[str, tuple[str, str | None]]:
        unstable_stages = {stage for stage, _key in self.unstable}
        return {s: (k, None if s in unstable_stages else d) for s, (k, d) in results.items()}


@pytest.fixture(scope="session", autouse=True)
def _frozen_code(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Subprocesses run a snapshot of forge taken now (see harness.code_root)."""
    if os.environ.get("FORGE_RELIABILITY_CODE"):
        yield Path(os.environ["FORGE_RELIABILITY_CODE"])
        return
    dst = tmp_path_factory.mktemp("code")
    for package in ("trtllm_forge", "tests"):
        shutil.copytree(ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["FORGE_RELIABILITY_CODE"] = str(dst)
    try:
        yield dst
    finally:
        del os.environ["FORGE_RELIABILITY_CODE"]


@pytest.fixture(scope="session")
def rel_model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("rel-model") / "llama"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


@pytest.fixture(scope="session")
def reference(rel_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    work = tmp_path_factory.mktemp("rel-reference")
    recipe = tiny_recipe(work / "recipe.yaml", rel_model, quantize=REAL_QUANTIZE)
    until, stopped = _farthest_stage(work / "probe-home", recipe)
    probe = store_entries(work / "probe-home")  # a second uninterrupted build, stage by stage
    home = work / "home"
    points_file = work / "points.txt"
    run = forge(
        home,
        "build",
        str(recipe),
        "--until",
        until,
        "--json",
        env={"FORGE_FAULT_LIST": str(points_file)},
    )
    entries = store_entries(home)
    unstable = frozenset(k for k, v in entries.items() if probe.get(k, v) != v)
    return Reference(
        model=rel_model,
        recipe=recipe,
        until=until,
        stopped=stopped,
        home=home,
        results=build_results(run),
        entries=entries,
        points=points_file.read_text().split(),
        seconds=run.seconds,
        unstable=unstable,
    )


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


# -- tier summary for docs/reliability.md -----------------------------------------------
_TALLY: dict[str, int] = {}
_NOT_PASSED: dict[str, list[str]] = {"failed": [], "xfailed": [], "skipped": []}
_STARTED: list[float] = []
_PARTIAL: list[str] = []  # why this session is not a whole-tier run
_CODE: dict[str, object] = {}  # the commit the subprocesses' snapshot was taken from


_LOAD: list[float] = []  # 1-minute load average, sampled while the tier runs (shared machines)


def _sample_load() -> None:
    import threading

    _LOAD.append(os.getloadavg()[0])
    timer = threading.Timer(30, _sample_load)
    timer.daemon = True
    timer.start()


def pytest_configure(config: pytest.Config) -> None:
    # Not pytest_sessionstart: pytest calls that only for conftests it loads before collecting
    # (those of the rootdir and of the paths given), so `make test-reliability`, which names
    # no path, never recorded the tier. A conftest's pytest_configure runs when it is loaded.
    import subprocess
    import time

    _STARTED.append(time.time())
    if not hasattr(config, "workerinput"):
        _sample_load()
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [
            *git,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "trtllm_forge",
            "tests/reliability",
        ],
        capture_output=True,
        text=True,
    )
    _CODE.update(commit=head.stdout.strip() or "unknown", dirty=bool(dirty.stdout.strip()))


def pytest_deselected(items: list[pytest.Item]) -> None:
    if any("reliability" in item.keywords for item in items):
        _PARTIAL.append("some reliability tests were deselected")


def pytest_collection_finish(session: pytest.Session) -> None:
    here = Path(__file__).parent
    ran = {Path(str(item.fspath)).name for item in session.items if "reliability" in item.keywords}
    missing = {p.name for p in here.glob("test_*.py")} - ran
    if missing:
        _PARTIAL.append(f"not collected: {sorted(missing)}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "reliability" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        _TALLY[outcome] = _TALLY.get(outcome, 0) + 1
        if outcome in _NOT_PASSED:
            _NOT_PASSED[outcome].append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Record the whole tier's outcome (a partial run leaves the last whole-tier record alone)."""
    import resource
    import time

    from tests.reliability.harness import record

    if _TALLY and _STARTED and not _PARTIAL and not hasattr(session.config, "workerinput"):
        cpu = sum(
            r.ru_utime + r.ru_stime
            for r in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        record(
            "tier",
            {
                "outcomes": dict(sorted(_TALLY.items())),
                "seconds": round(time.time() - _STARTED[0]),
                "cpu_seconds": round(cpu),
                "cpus": os.cpu_count(),
                **_CODE,
                **_NOT_PASSED,
                "load_mean": round(sum(_LOAD) / len(_LOAD), 1) if _LOAD else None,
                "load_max": round(max(_LOAD), 1) if _LOAD else None,
            },
        )
