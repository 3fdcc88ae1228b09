"""Integrity: a damaged artifact is never used.

Damage a stored artifact (flip one byte keeping size and mtime, truncate,
delete a file, delete or garble the manifest); the next build that reads it
must notice (the store re-digests through its stat memo, and any write moves
ctime), say "cached entry rejected (...)", rebuild it bit-identical, and go on.
``forge cache verify`` finds damage across the whole store (exit 6) and
``--fix`` removes it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import (
    audit_store,
    build_results,
    file_digest,
    forge,
    record,
    store_entries,
)
from trtllm_forge.store.events import read_events

pytestmark = pytest.mark.reliability


def artifact_dir(home: Path, stage: str, key: str) -> Path:
    return home / "artifacts" / stage / key.split(":", 1)[1]


def largest_file(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


def flip_byte(path: Path) -> None:
    """Flip one byte in the middle, then put size and mtime back as they were."""
    st = path.stat()
    os.chmod(path, 0o644)  # a file the store shares between artifacts is read-only
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, st.st_mode)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def build(ref: Reference, home: Path, until: str | None = None) -> dict[str, dict[str, object]]:
    run = forge(home, "build", str(ref.recipe), "--until", until or ref.until, "--json")
    assert run.code == 0, run.text
    assert "Traceback" not in run.text
    stages = {s["stage"]: s for s in run.json()["stages"]}
    stages["_stderr"] = {"text": run.err}
    return stages


def test_flipped_byte_in_each_stage_is_rejected_and_rebuilt(
    reference: Reference, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    build(reference, home)
    own_files = [
        s
        for s in reference.stages
        if json.loads(
            (artifact_dir(home, s, reference.results[s][0]) / "manifest.json").read_text()
        )["files"]
    ]
    assert "convert" in own_files
    for stage in own_files:
        key = reference.results[stage][0]
        victim = largest_file(artifact_dir(home, stage, key))
        flip_byte(victim)
        stages = build(reference, home)
        assert stages[stage]["status"] == "built"
        assert f"{stage}: cached entry rejected (" in str(stages["_stderr"]["text"])
        assert "does not match its digest" in str(stages[stage]["note"])
        assert all(stages[s]["status"] == "hit" for s in reference.stages if s != stage)
        assert file_digest(victim) == _manifest_digest(victim, artifact_dir(home, stage, key))
        rejected = [e for e in read_events(home) if e["event"] == "rejected"]
        assert rejected[-1]["stage"] == stage
    assert reference.stable(store_entries(home)) == reference.stable(reference.entries)
    assert audit_store(home) == []
    record("integrity_flip", {"stages": own_files, "detected": len(own_files)})


def _manifest_digest(file: Path, artifact: Path) -> str:
    manifest = json.loads((artifact / "manifest.json").read_text())
    return str(manifest["files"][file.relative_to(artifact).as_posix()]["digest"])


def _garble(path: Path) -> None:
    path.write_text("{ not json")


def _other_key(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["key"] = "blake3:" + "0" * 64
    path.write_text(json.dumps(doc))


DAMAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (damage applied to a path in the convert artifact, which path, expected reason)
    "flip-byte": (flip_byte, "rank0.safetensors", "does not match its digest"),
    "truncate": (truncate, "rank0.safetensors", "has size"),
    "delete-file": (lambda p: p.unlink(), "config.json", "is missing"),
    "delete-manifest": (
        lambda p: p.unlink(),
        "manifest.json",
        "manifest.json is missing or unreadable",
    ),
    "garbage-manifest": (_garble, "manifest.json", "manifest.json is missing or unreadable"),
    "manifest-of-another-key": (_other_key, "manifest.json", "belongs to another key"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_convert_artifact_is_a_miss(
    reference: Reference, tmp_path: Path, damage: str
) -> None:
    home = tmp_path / "home"
    first = build(reference, home, "calibrate")
    key = str(first["convert"]["key"])
    apply, name, reason = DAMAGES[damage]
    apply(artifact_dir(home, "convert", key) / name)
    listing = forge(home, "cache", "ls", "--json").json()["artifacts"]
    assert [a["valid"] for a in listing if a["key"] == key] == [False]
    again = build(reference, home, "calibrate")
    assert again["convert"]["status"] == "built" and reason in str(again["convert"]["note"])
    assert "cached entry rejected" in str(again["_stderr"]["text"])
    assert again["calibrate"]["status"] == "hit"  # same content digest upstream → same key
    assert audit_store(home) == []
    assert forge(home, "cache", "verify").code == 0


def test_cache_verify_finds_damage_everywhere_and_fix_removes_it(
    reference: Reference, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    build(reference, home)
    assert forge(home, "cache", "verify").code == 0
    manifests = {
        (stage, key): json.loads((artifact_dir(home, stage, key) / "manifest.json").read_text())
        for stage, key in reference.entries
    }
    # Flip a byte in every artifact holding files of its own (fetch references the source
    # model in place, a pass-through calibrate references convert's checkpoint).
    damaged = {stage for (stage, _key), manifest in manifests.items() if manifest["files"]}
    flipped: set[tuple[int, int]] = set()
    for (stage, key), manifest in manifests.items():
        if manifest["files"]:
            victim = largest_file(artifact_dir(home, stage, key))
            inode = (victim.stat().st_dev, victim.stat().st_ino)
            if inode not in flipped:  # one file artifacts share (a blob): damaged in all
                flip_byte(victim)
                flipped.add(inode)
    run = forge(home, "cache", "verify", "--json")
    assert run.code == 6 and "Traceback" not in run.text
    report, end = json.JSONDecoder().raw_decode(run.out)
    found = {d["stage"] for d in report["damaged"]}
    # An artifact referencing another artifact's (damaged) files is damaged with them.
    store = str(home / "artifacts") + "/"
    expected = damaged | {
        stage
        for (stage, _key), manifest in manifests.items()
        if str((manifest.get("external") or {}).get("root", "")).startswith(store)
    }
    assert "calibrate" in expected and found == expected
    text = forge(home, "cache", "verify")
    assert text.code == 6 and "damaged" in text.out and "cache verify --fix" in text.err
    fixed = forge(home, "cache", "verify", "--fix")
    assert fixed.code == 0, fixed.text
    assert forge(home, "cache", "verify").code == 0 and audit_store(home) == []
    rebuilt = build_results(
        forge(home, "build", str(reference.recipe), "--until", reference.until, "--json")
    )
    assert reference.stable_results(rebuilt) == reference.stable_results(reference.results)
    record(
        "integrity_verify",
        {"damaged_artifacts": len(expected), "detected_by_verify": len(found & expected)},
    )
    assert not run.out[end:].strip(), (
        f"`cache verify --json` printed more than one JSON document:\n{run.out}"
    )


def test_verify_deep_rereads_bytes_under_a_stale_memo(reference: Reference, tmp_path: Path) -> None:
    """Bit rot that leaves size and times alone: only re-reading the bytes can see it.
    Simulated by making the memo claim the old digest for the file's new stat."""
    from trtllm_forge.store import maintenance
    from trtllm_forge.store.store import Store

    home = tmp_path / "home"
    first = build(reference, home, "convert")
    victim = artifact_dir(home, "convert", str(first["convert"]["key"])) / "rank0.safetensors"
    good = file_digest(victim)
    flip_byte(victim)
    st = victim.stat()
    with sqlite3.connect(home / "memo.sqlite") as db:
        db.execute(
            "INSERT OR REPLACE INTO file_digest VALUES (?,?,?,?,?,?)",
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, good),
        )
    store = Store(home)
    assert all(e.problem is None for e in maintenance.entries(store))  # the memo is fooled
    deep = [e for e in maintenance.entries(store, deep=True) if e.problem]
    assert [e.stage for e in deep] == ["convert"]
    assert [e.stage for e in maintenance.entries(store) if e.problem] == [
        "convert"
    ]  # memo repaired


def test_garbage_memo_database_is_rebuilt_not_fatal(reference: Reference, tmp_path: Path) -> None:
    home = tmp_path / "home"
    build(reference, home, "convert")
    (home / "memo.sqlite").write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        Path(f"{home / 'memo.sqlite'}{suffix}").unlink(missing_ok=True)
    again = build(reference, home, "convert")
    assert {again[s]["status"] for s in ("fetch", "convert")} == {"hit"}
    assert forge(home, "cache", "verify").code == 0
