"""Identical files are stored once: artifacts hold hard links to content-addressed
blobs (trtllm_forge/store/blobs.py). Real stores on real file systems; the copy
fallback is exercised by putting the blobs on another file system (/dev/shm)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from trtllm_forge.context import NullProgress
from trtllm_forge.stages import stage_names
from trtllm_forge.store import maintenance
from trtllm_forge.store.blobs import MIN_BLOB_BYTES
from trtllm_forge.store.remote import open_remote
from trtllm_forge.store.store import Artifact, Store
from trtllm_forge.store.transfer import RemoteCache

WEIGHTS = os.urandom(MIN_BLOB_BYTES * 3)


def _commit(store: Store, stage: str, n: int, files: dict[str, bytes]) -> Artifact:
    key = "blake3:" + f"{n:02x}" * 32
    staging = store.new_staging_dir(stage, key)
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    with store.lock(key):
        return store.commit(stage, key, staging, {"inputs": {}})


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _disk_bytes(root: Path) -> int:
    seen = {_inode(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    return sum(seen.values())


def test_identical_files_share_one_read_only_inode_and_stay_valid(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    small = b'{"a": 1}'
    a = _commit(store, "convert", 1, {"rank0.safetensors": WEIGHTS, "config.json": small})
    b = _commit(store, "shard", 2, {"rank0.safetensors": WEIGHTS, "config.json": small})
    big_a, big_b = a.path / "rank0.safetensors", b.path / "rank0.safetensors"
    assert _inode(big_a) == _inode(big_b)
    assert stat.S_IMODE(big_a.stat().st_mode) == 0o444  # editing one would change both
    assert _inode(a.path / "config.json") != _inode(b.path / "config.json")  # small: own copy
    blob = store.blobs.path(a.manifest["files"]["rank0.safetensors"]["digest"])
    assert blob is not None and _inode(blob) == _inode(big_a) and blob.stat().st_nlink == 3
    assert _disk_bytes(tmp_path / "home" / "artifacts") < 2 * len(WEIGHTS)
    # Linking changed the inode's ctime; the store re-recorded it, so no re-hash.
    fresh = Store(tmp_path / "home")
    assert isinstance(fresh.lookup("convert", a.key), Artifact)
    assert isinstance(fresh.lookup("shard", b.key), Artifact)
    assert fresh.memo.misses == 0
    usage = maintenance.usage(fresh, stage_names())
    assert sum(usage.values()) == _disk_bytes(tmp_path / "home" / "artifacts")


def test_removing_entries_keeps_the_sharer_and_sweeps_the_last_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    a = _commit(store, "convert", 1, {"w.bin": WEIGHTS})
    b = _commit(store, "shard", 2, {"w.bin": WEIGHTS})
    blob = store.blobs.path(a.manifest["files"]["w.bin"]["digest"])
    assert blob is not None
    store.remove(a.path)
    fresh = Store(tmp_path / "home")
    assert isinstance(fresh.lookup("shard", b.key), Artifact) and fresh.memo.misses == 0
    assert blob.exists()
    fresh.remove(b.path)
    assert not blob.exists()  # nothing holds it any more


def test_gc_reports_shared_bytes_once_and_dry_run_agrees(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _commit(Store(home), "convert", 1, {"w.bin": WEIGHTS, "x.bin": WEIGHTS[::-1]})
    _commit(Store(home), "shard", 2, {"w.bin": WEIGHTS})
    manifests = sum(p.stat().st_size for p in home.glob("artifacts/*/*/manifest.json"))
    dry = maintenance.gc(Store(home), dry_run=True)  # no refs: both entries unreferenced
    real = maintenance.gc(Store(home))
    assert dry["freed_bytes"] == real["freed_bytes"] == 2 * len(WEIGHTS) + manifests
    assert Store(home).blobs.all() == []
    assert _disk_bytes(home / "artifacts") == 0


def test_damaged_shared_file_is_repaired_by_the_next_good_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    a = _commit(store, "convert", 1, {"w.bin": WEIGHTS})
    victim = a.path / "w.bin"
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:  # bit rot, or a user who forced an edit
        f.seek(100)
        f.write(b"\xff\x00\xff")
    os.chmod(victim, 0o444)
    assert not isinstance(Store(tmp_path / "home").lookup("convert", a.key), Artifact)
    b = _commit(Store(tmp_path / "home"), "shard", 2, {"w.bin": WEIGHTS})
    assert (b.path / "w.bin").read_bytes() == WEIGHTS
    assert victim.read_bytes() == WEIGHTS  # the shared inode was rewritten in place
    assert isinstance(Store(tmp_path / "home").lookup("convert", a.key), Artifact)


def test_copied_store_works_without_links_and_gc_drops_the_copied_blobs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = _commit(Store(home), "convert", 1, {"w.bin": WEIGHTS})
    b = _commit(Store(home), "shard", 2, {"w.bin": WEIGHTS})
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)  # hard links become separate files
    moved = Store(copy)
    assert isinstance(moved.lookup("convert", a.key), Artifact)
    assert isinstance(moved.lookup("shard", b.key), Artifact)
    blob = moved.blobs.all()
    assert len(blob) == 1 and blob[0].stat().st_nlink == 1
    assert moved.blobs.sweep() == len(WEIGHTS)
    assert isinstance(moved.lookup("convert", a.key), Artifact)
    c = _commit(moved, "calibrate", 3, {"w.bin": WEIGHTS})  # indexes the file again
    assert _inode(c.path / "w.bin") != _inode(copy / "artifacts/convert" / a.path.name / "w.bin")
    assert moved.blobs.all()[0].stat().st_nlink == 2


def test_blobs_on_another_file_system_fall_back_to_copies(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    blobs = other / f"forge-blobs-{os.getpid()}-{tmp_path.name}"
    blobs.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "blobs").symlink_to(blobs)  # links from home into it fail with EXDEV
    try:
        store = Store(home)
        a = _commit(store, "convert", 1, {"w.bin": WEIGHTS})
        b = _commit(store, "shard", 2, {"w.bin": WEIGHTS})
        assert _inode(a.path / "w.bin") != _inode(b.path / "w.bin")
        assert isinstance(Store(home).lookup("shard", b.key), Artifact)
        assert [p for p in blobs.rglob("*") if p.is_file()] == []
    finally:
        shutil.rmtree(blobs)


def test_pull_links_a_file_the_store_already_holds(tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    url = remote_dir.as_uri()
    source = Store(tmp_path / "a")
    pushed = _commit(source, "convert", 1, {"w.bin": WEIGHTS})
    RemoteCache(source, open_remote(url), NullProgress()).push(pushed)
    digest = pushed.manifest["files"]["w.bin"]["digest"].split(":")[1]
    (remote_dir / "blobs" / digest[:2] / digest).unlink()  # only a local copy can serve it

    here = Store(tmp_path / "b")
    held = _commit(here, "shard", 2, {"w.bin": WEIGHTS})
    got = RemoteCache(here, open_remote(url), NullProgress()).pull("convert", pushed.key)
    assert isinstance(got, Artifact)
    assert _inode(got.path / "w.bin") == _inode(held.path / "w.bin")


def test_export_materializes_own_writable_copies(tmp_path: Path) -> None:
    from trtllm_forge.exporters import materialize

    store = Store(tmp_path / "home")
    a = _commit(store, "convert", 1, {"w.bin": WEIGHTS, "sub/config.json": b"{}"})
    _commit(store, "shard", 2, {"w.bin": WEIGHTS})
    dest = tmp_path / "export"
    for _ in range(2):  # the second time over the first export's files
        assert materialize(a.path, dest) == ["manifest.json", "sub/config.json", "w.bin"]
    out = dest / "w.bin"
    assert out.read_bytes() == WEIGHTS and out.stat().st_nlink == 1
    assert out.stat().st_mode & stat.S_IWUSR
    with open(out, "r+b") as f:  # editing the export leaves the store alone
        f.write(b"edited")
    assert isinstance(Store(tmp_path / "home").lookup("convert", a.key), Artifact)
