"""Concurrency: several `forge build` processes on one store.

Work is counted through the product's own event log
(``$FORGE_HOME/log/events.jsonl``: one line per stage start/commit/hit). To
make the interleavings deterministic rather than lucky, a build can be parked
at a fault point with ``FORGE_FAULT_ACTION=stop`` (it SIGSTOPs itself while
holding that stage's lock) and later continued or SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import (
    audit_store,
    forge,
    process_state,
    record,
    spawn,
    staging_leftovers,
    store_entries,
    tiny_recipe,
    wait_for,
)
from trtllm_forge.store.events import read_events

pytestmark = pytest.mark.reliability
N_BUILDS = 4
_LOCKS: list[str] = []  # one line per interleaving proved, for docs/reliability.md


@pytest.fixture(scope="module", autouse=True)
def _record_locks() -> Iterator[None]:
    yield
    record("concurrency_locks", {"proved": _LOCKS})


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children started by a test; any still alive at the end are killed (by pid)."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def parked(home: Path, recipe: Path, until: str, point: str, log: Path) -> subprocess.Popen[bytes]:
    """A build that stops itself at ``point`` (holding whatever lock it holds there)."""
    proc = spawn(
        home,
        "build",
        str(recipe),
        "--until",
        until,
        "--json",
        log=log,
        env={"FORGE_FAULT": point, "FORGE_FAULT_ACTION": "stop"},
    )
    wait_for(
        lambda: process_state(proc.pid) == "T" or proc.poll() is not None, what=f"stop at {point}"
    )
    assert proc.poll() is None, f"exited {proc.returncode} before {point}: {log.read_text()}"
    return proc


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 900) -> dict[str, str]:
    """Wait for a build; stage → key from its --json output."""
    code = proc.wait(timeout=timeout)
    text = log.read_text()
    assert code == 0, f"exit {code}: {text[-2000:]}"
    doc = json.loads(text[text.index("{\n") :])
    return {s["stage"]: s["key"] for s in doc["stages"]}


def waiting(home: Path, stage: str, pid: int) -> bool:
    """Whether build ``pid`` has logged that it waits for another build's ``stage`` lock."""
    return any(
        e["event"] == "wait" and e["stage"] == stage and e["pid"] == pid for e in read_events(home)
    )


def starts(home: Path) -> Counter[tuple[str, str]]:
    return Counter((e["stage"], e["key"]) for e in read_events(home) if e["event"] == "start")


def test_concurrent_builds_of_one_recipe_do_each_stage_once(
    reference: Reference, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    logs = [tmp_path / f"build{i}.log" for i in range(N_BUILDS)]
    t0 = time.perf_counter()
    with processes() as procs:
        for log in logs:
            procs.append(
                spawn(
                    home,
                    "build",
                    str(reference.recipe),
                    "--until",
                    reference.until,
                    "--json",
                    log=log,
                )
            )
        keys = [finish(proc, log) for proc, log in zip(procs, logs, strict=True)]
    assert all(k == keys[0] for k in keys)
    # identical artifacts, bit for bit (where two clean builds agree at all)
    assert reference.stable(store_entries(home)) == reference.stable(reference.entries)
    assert audit_store(home) == []
    counted = starts(home)
    assert counted and all(n == 1 for n in counted.values()), counted
    assert set(counted) == set(reference.entries)  # every artifact built exactly once
    events = read_events(home)
    commits = Counter((e["stage"], e["key"]) for e in events if e["event"] == "commit")
    assert commits == counted
    hits = sum(1 for e in events if e["event"] == "hit")
    record(
        "concurrency",
        {
            "builds": N_BUILDS,
            "artifacts": len(counted),
            "stage_runs": sum(counted.values()),
            "cache_hits": hits,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


def test_waiters_reuse_the_holders_work(reference: Reference, tmp_path: Path) -> None:
    """Deterministic version: the first build holds convert's lock while the others queue."""
    home = tmp_path / "home"
    logs = [tmp_path / f"build{i}.log" for i in range(N_BUILDS)]
    with processes() as procs:
        procs.append(
            parked(home, reference.recipe, reference.until, "stage.convert.start", logs[0])
        )
        for log in logs[1:]:
            procs.append(
                spawn(
                    home,
                    "build",
                    str(reference.recipe),
                    "--until",
                    reference.until,
                    "--json",
                    log=log,
                )
            )
        for proc in procs[1:]:
            wait_for(lambda proc=proc: waiting(home, "convert", proc.pid), what="waiting")
        assert all(p.poll() is None for p in procs)  # nobody got past the held lock
        os.kill(procs[0].pid, signal.SIGCONT)
        keys = [finish(proc, log) for proc, log in zip(procs, logs, strict=True)]
    assert all(k == keys[0] for k in keys)
    assert all(n == 1 for n in starts(home).values())
    waited = [e for e in read_events(home) if e["event"] == "hit" and e.get("waited")]
    assert {e["pid"] for e in waited if e["stage"] == "convert"} == {p.pid for p in procs[1:]}
    _LOCKS.append(
        f"{N_BUILDS - 1} builds queued on a parked holder's convert lock, then reused its artifact"
    )


def test_different_recipes_block_only_on_shared_keys(reference: Reference, tmp_path: Path) -> None:
    home = tmp_path / "home"
    other = tiny_recipe(tmp_path / "other.yaml", reference.model, name="other", dtype="bfloat16")
    until = "convert"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with processes() as procs:
        # A parks inside its own convert (fetch is shared and already committed):
        procs.append(parked(home, reference.recipe, until, "stage.convert.start", log_a))
        procs.append(spawn(home, "build", str(other), "--until", until, "--json", log=log_b))
        keys_b = finish(procs[1], log_b)  # B converts while A holds A's convert lock
        assert procs[0].poll() is None and process_state(procs[0].pid) == "T"
        os.kill(procs[0].pid, signal.SIGCONT)
        keys_a = finish(procs[0], log_a)
    assert keys_a["fetch"] == keys_b["fetch"] and keys_a["convert"] != keys_b["convert"]
    assert starts(home)[("fetch", keys_a["fetch"])] == 1
    _LOCKS.append("another recipe built its own convert while the first held its convert lock")


def test_shared_upstream_key_is_waited_for(reference: Reference, tmp_path: Path) -> None:
    home = tmp_path / "home"
    other = tiny_recipe(tmp_path / "other.yaml", reference.model, name="other", dtype="bfloat16")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with processes() as procs:
        procs.append(parked(home, reference.recipe, "convert", "stage.fetch.start", log_a))
        procs.append(spawn(home, "build", str(other), "--until", "convert", "--json", log=log_b))
        wait_for(lambda: waiting(home, "fetch", procs[1].pid), what="B waiting on fetch")
        time.sleep(1.0)
        assert procs[1].poll() is None  # B cannot pass the shared fetch key while A holds it
        os.kill(procs[0].pid, signal.SIGCONT)
        keys_a, keys_b = finish(procs[0], log_a), finish(procs[1], log_b)
    assert keys_a["fetch"] == keys_b["fetch"]
    assert starts(home)[("fetch", keys_a["fetch"])] == 1
    _LOCKS.append("another recipe waited on the shared fetch key until its holder finished")


def test_lock_of_a_killed_holder_is_recovered(reference: Reference, tmp_path: Path) -> None:
    home = tmp_path / "home"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with processes() as procs:
        procs.append(parked(home, reference.recipe, "convert", "stage.convert.start", log_a))
        procs.append(
            spawn(
                home,
                "build",
                str(reference.recipe),
                "--until",
                "convert",
                "--json",
                log=log_b,
                env={"FORGE_LOCK_TIMEOUT": "120"},
            )
        )
        wait_for(lambda: waiting(home, "convert", procs[1].pid), what="B waiting")
        assert "convert: another build holds" in log_b.read_text()  # and says so
        os.kill(procs[0].pid, signal.SIGKILL)  # the holder dies without any cleanup
        assert procs[0].wait() == -signal.SIGKILL
        keys_b = finish(procs[1], log_b)
    assert audit_store(home) == []
    convert_starts = [
        e for e in read_events(home) if e["event"] == "start" and e["stage"] == "convert"
    ]
    assert [e["pid"] for e in convert_starts] == [procs[0].pid, procs[1].pid]
    assert (home / "artifacts" / "convert" / keys_b["convert"].split(":")[1]).is_dir()
    leftovers = staging_leftovers(home)
    assert any(str(procs[0].pid) in name for name in leftovers)  # the dead holder's half-built dir
    assert forge(home, "cache", "gc").code == 0
    assert staging_leftovers(home) == []
    _LOCKS.append(
        "SIGKILLing a lock holder let its waiter build at once; gc removed the dead holder's staging"
    )


def test_lock_timeout_is_a_store_error(reference: Reference, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with processes() as procs:
        procs.append(
            parked(home, reference.recipe, "convert", "stage.convert.start", tmp_path / "a.log")
        )
        run = forge(
            home,
            "build",
            str(reference.recipe),
            "--until",
            "convert",
            env={"FORGE_LOCK_TIMEOUT": "1"},
        )
    assert run.code == 6 and "Traceback" not in run.text
    assert "timed out" in run.err and "FORGE_LOCK_TIMEOUT" in run.err
    _LOCKS.append("a lock wait past FORGE_LOCK_TIMEOUT is exit 6 naming the variable")
