"""Crash safety: SIGKILL `forge build` at every fault point it passes.

For each point (``trtllm_forge.faults``) an uninterrupted build reaches, a
fresh store is built up to that point and the process kills itself there.
Then:

1. nothing partial is visible: every dir under ``artifacts/`` holds a manifest
   naming exactly its files, with matching sizes and blake3 digests (checked
   independently of the store code), and ``forge cache ls --json`` agrees;
2. a rerun succeeds with the same stage keys and content digests as the
   uninterrupted build, and the store holds exactly the same entries;
3. ``forge cache gc`` removes every staging leftover of the killed process.

Points reached many times (one per tensor written) are killed at their
first, middle and last occurrence in each stage. A kill inside stage S runs
the build ``--until S``: stages after S only ever see S's finished artifact,
so running them again after every kill would add time, not coverage (kills
while writing the ref at the very end run the whole build).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import (
    KILLED,
    REAL_QUANTIZE,
    STAGES,
    audit_store,
    base_env,
    build_results,
    code_root,
    forge,
    ls_problems,
    record,
    staging_leftovers,
    store_entries,
)

pytestmark = pytest.mark.reliability


@dataclass(frozen=True)
class Case:
    point: str
    nth: int  # which occurrence of ``point`` in the whole build
    until: str  # the top-level stage the point belongs to


def stage_of_points(points: list[str], last_stage: str) -> list[str]:
    """The top-level stage each reached point belongs to (ref writes: the last stage's)."""
    stage_of: list[str] = []
    stage = STAGES[0]
    for name in points:
        parts = name.split(".")
        if parts[0] == "stage" and parts[1] in STAGES and parts[2] == "start":
            stage = parts[1]
        stage_of.append(last_stage if name.startswith(("runner.ref", "store.ref")) else stage)
    return stage_of


def kill_cases(points: list[str], last_stage: str) -> list[Case]:
    """(point, nth, stage) to kill at: every point, first/middle/last occurrence per stage."""
    stage_of = stage_of_points(points, last_stage)
    seen: Counter[str] = Counter()
    by_segment: dict[tuple[str, str], list[int]] = {}
    for name, segment in zip(points, stage_of, strict=True):
        seen[name] += 1
        by_segment.setdefault((name, segment), []).append(seen[name])
    cases = []
    for (name, segment), nths in by_segment.items():  # first-reached order
        picks = sorted({nths[0], nths[(len(nths) - 1) // 2], nths[-1]})
        cases += [Case(name, nth, segment) for nth in picks]
    return cases


@dataclass
class Outcome:
    point: str
    nth: int
    leftovers: int = 0
    problems: list[str] = field(default_factory=list)


def run_case(ref: Reference, home: Path, case: Case) -> Outcome:
    point, nth = case.point, case.nth
    outcome = Outcome(point, nth)
    problems = outcome.problems
    build = ("build", str(ref.recipe), "--until", case.until, "--json")
    killed = forge(home, *build, env={"FORGE_FAULT": f"{point}:{nth}"})
    if killed.code != KILLED:
        problems.append(f"expected SIGKILL at {point}:{nth}, got exit {killed.code}")
        return outcome
    problems += audit_store(home) + ls_problems(home)
    leftovers = staging_leftovers(home)
    outcome.leftovers = len(leftovers)
    rerun = forge(home, *build)
    if rerun.code != 0:
        problems.append(f"rerun exited {rerun.code}: {rerun.text[-800:]}")
        return outcome
    wanted = ref.entries_until(case.until)
    want_results = {
        s: r for s, r in ref.results.items() if s in STAGES[: STAGES.index(case.until) + 1]
    }
    problems += _differences(
        "rerun", ref.stable_results(build_results(rerun)), ref.stable_results(want_results)
    )
    problems += _differences("store", ref.stable(store_entries(home)), ref.stable(wanted))
    problems += _gc_cleans(home, leftovers, set(wanted))
    return outcome


def _differences(what: str, got: dict[Any, Any], want: dict[Any, Any]) -> list[str]:
    """Entries that differ from the uninterrupted build, compactly."""
    return [
        f"{what} {name}: {got.get(name)} != uninterrupted {want.get(name)}"
        for name in sorted(set(got) | set(want), key=str)
        if got.get(name) != want.get(name)
    ]


def _gc_cleans(home: Path, leftovers: list[str], wanted: set[tuple[str, str]]) -> list[str]:
    """gc removes every leftover of the kill and nothing the finished build uses."""
    gc = forge(home, "cache", "gc", "--json")
    if gc.code != 0:
        return [f"gc exited {gc.code}: {gc.text[-500:]}"]
    removed = {
        Path(item["path"]).name for item in gc.json()["removed"] if item.get("stage") == "(staging)"
    }
    problems = []
    if not set(leftovers) <= removed:
        problems.append(f"gc left staging leftovers {sorted(set(leftovers) - removed)}")
    if staging_leftovers(home):
        problems.append(f"tmp/ not empty after gc: {staging_leftovers(home)}")
    if set(store_entries(home)) != wanted:
        problems.append(
            f"gc removed artifacts the build uses: {sorted(wanted - set(store_entries(home)))}"
        )
    return problems + audit_store(home)


def test_points_cover_every_stage_commit_and_ref(reference: Reference) -> None:
    assert reference.until == STAGES[-1], f"not every stage builds: {reference.stopped}"
    reached = set(reference.points)
    for stage in reference.stages:
        assert f"stage.{stage}.start" in reached
        for step in ("before_manifest", "after_manifest", "before_rename", "after_rename"):
            assert f"store.commit.{stage}.{step}" in reached
    assert {
        "runner.ref.before_write",
        "store.ref.before_replace",
        "runner.ref.after_write",
    } <= reached
    written = Counter(
        stage
        for name, stage in zip(
            reference.points, stage_of_points(reference.points, reference.until), strict=True
        )
        if name == "safetensors.tensor_written"
    )
    # convert and calibrate (a real AWQ checkpoint: weights, scales, pre-quant scales) stream
    # every tensor through the instrumented writer, so kills land mid-file in both.
    assert written["convert"] >= 10 and written["calibrate"] >= written["convert"], written


def test_uninterrupted_builds_are_bit_reproducible(reference: Reference) -> None:
    """Two clean builds of one recipe give identical artifacts (what the kill tests compare)."""
    record(
        "reproducible",
        {
            "artifacts": len(reference.entries),
            "unstable": sorted(f"{s} {k[:19]}" for s, k in reference.unstable),
        },
    )
    assert not reference.unstable, (
        "artifacts differ between two uninterrupted builds (absolute or staging paths, "
        f"timestamps?): {sorted(reference.unstable)} — compare their files"
    )


def test_kill_at_every_point_leaves_a_consistent_store(
    reference: Reference, tmp_path: Path
) -> None:
    cases = kill_cases(reference.points, reference.until)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(
            pool.map(
                lambda ic: run_case(reference, tmp_path / f"case{ic[0]}", ic[1]), enumerate(cases)
            )
        )
    failed = [o for o in outcomes if o.problems]
    record(
        "crash",
        {
            "stages": list(reference.stages),
            "not_covered": reference.stopped,
            "distinct_points": len(set(reference.points)),
            "points_reached": len(reference.points),
            "kills": len(outcomes),
            "kills_by_stage": dict(Counter(case.until for case in cases)),
            "quantize": REAL_QUANTIZE["method"],
            "kills_survived": len(outcomes) - len(failed),
            "kills_leaving_staging": sum(1 for o in outcomes if o.leftovers),
            "seconds": round(time.perf_counter() - t0, 1),
            "failures": [f"{o.point}:{o.nth}: {o.problems}" for o in failed],
        },
    )
    assert len(cases) >= 20
    assert any(o.leftovers for o in outcomes)  # some kills really left a half-built artifact
    assert not failed, "\n".join(f"{o.point}:{o.nth}: {p}" for o in failed for p in o.problems)


def test_fault_env_semantics(tmp_path: Path) -> None:
    """nth occurrence, the points list, and SIGSTOP — through a real process."""
    listing = tmp_path / "points.txt"
    code = (
        "from trtllm_forge.faults import point\n"
        "for _ in range(3):\n    point('a')\n    point('b')\nprint('survived')\n"
    )
    env = base_env(tmp_path, FORGE_FAULT="b:2", FORGE_FAULT_LIST=str(listing))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=code_root()
    )
    assert proc.returncode == KILLED and "survived" not in proc.stdout
    assert listing.read_text().split() == ["a", "b", "a", "b"]
    env = base_env(tmp_path, FORGE_FAULT="c")  # a point never reached: no effect
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=code_root()
    )
    assert proc.returncode == 0 and "survived" in proc.stdout


def test_points_cost_nothing_when_unset() -> None:
    """With no FORGE_FAULT*, the env is read once and point() is a global check."""
    from trtllm_forge import faults

    faults.reset({})
    assert faults._config is None
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        faults.point("store.commit.convert.before_rename")
    per_call_ns = (time.perf_counter() - t0) / n * 1e9
    faults.reset({"FORGE_FAULT": "x:3", "FORGE_FAULT_ACTION": "stop"})
    assert isinstance(faults._config, faults._Config)
    assert (faults._config.target, faults._config.nth) == ("x", 3)
    faults.reset({})
    record("fault_overhead", {"ns_per_point_unset": round(per_call_ns, 1)})
