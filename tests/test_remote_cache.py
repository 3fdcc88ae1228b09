"""The remote cache with the core alone: file:// remotes, backend lookup, no cloud SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, forge, write_recipe
from trtllm_forge.errors import ForgeError


def _recipe(root: Path, model: Path) -> Path:
    return write_recipe(
        root / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        build={"max_input_len": 32, "max_seq_len": 64},
    )


def _events(home: Path) -> list[dict]:  # type: ignore[type-arg]
    path = home / "log" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _tree(home: Path) -> dict[str, bytes]:
    base = home / "artifacts"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> dict:  # type: ignore[type-arg]
    """fetch → calibrate built once in home A with a file:// remote (auto push)."""
    root = tmp_path_factory.mktemp("remote")
    remote = root / "remote"
    remote.mkdir()
    recipe = _recipe(root, tiny_models["llama"])
    # In-process (the subprocess tests below exercise the CLI): saves an interpreter start.
    from trtllm_forge import api
    from trtllm_forge.context import RunContext, Settings

    ctx = RunContext(Settings(home=root / "a", remote=remote.as_uri()))
    results = api.build(recipe=recipe, until="calibrate", ctx=ctx)
    assert [r.status for r in results] == ["built"] * 3
    assert len(list((remote / "entries").glob("*/*.json"))) == 3  # pushed after each commit
    return {"root": root, "remote": remote, "recipe": recipe, "a": root / "a"}


def test_second_home_pulls_everything_and_runs_nothing(shared: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    home = tmp_path / "b"
    env = {"FORGE_HOME": str(home), "FORGE_REMOTE": shared["remote"].as_uri()}
    run = forge("build", str(shared["recipe"]), "--until", "calibrate", "--json", env=env)
    assert run.code == 0, run.err
    assert [s["status"] for s in run.json()["stages"]] == ["pulled"] * 3
    kinds = [e["event"] for e in _events(home)]
    assert "start" not in kinds and kinds.count("pull") == 3
    assert _tree(home) == _tree(shared["a"])  # manifests included, byte for byte


def test_flipped_byte_on_remote_is_a_reported_miss(shared: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    remote = tmp_path / "remote"
    shutil.copytree(shared["remote"], remote)
    manifest = json.loads(next((remote / "entries" / "convert").glob("*.json")).read_text())
    digest = next(iter(manifest["files"].values()))["digest"].split(":")[1]
    blob = remote / "blobs" / digest[:2] / digest
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    home = tmp_path / "b"
    env = {"FORGE_HOME": str(home), "FORGE_REMOTE": remote.as_uri()}
    pulled = forge("cache", "pull", manifest["key"], env=env)
    assert_clean_error(pulled, 6, "does not match its digest")
    assert not (home / "artifacts" / "convert").exists() or not any(
        (home / "artifacts" / "convert").iterdir()
    )
    # forge build warns, rebuilds that stage locally and carries on.
    run = forge("build", str(shared["recipe"]), "--until", "convert", "--json", env=env)
    assert run.code == 0, run.err
    assert [s["status"] for s in run.json()["stages"]] == ["pulled", "built"]
    assert "does not match its digest" in run.err and "building locally" in run.err
    assert [e["stage"] for e in _events(home) if e["event"] == "remote-miss"] == ["convert"]


def test_push_pull_commands_and_missing_manifest(shared: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    remote = tmp_path / "remote"
    remote.mkdir()
    env_a = {"FORGE_HOME": str(shared["a"]), "FORGE_REMOTE": remote.as_uri()}
    pushed = forge("cache", "push", str(shared["recipe"]), "--json", env=env_a)
    assert pushed.code == 0, pushed.err
    statuses = {e["stage"]: e["status"] for e in pushed.json()["entries"]}
    assert statuses == {"fetch": "pushed", "convert": "pushed", "calibrate": "pushed"}
    again = forge("cache", "push", str(shared["recipe"]), "--json", env=env_a)
    assert {e["status"] for e in again.json()["entries"]} == {"already"}
    listed = forge("cache", "ls", "--remote", "--json", env=env_a)
    assert sorted(e["stage"] for e in listed.json()["entries"]) == ["calibrate", "convert", "fetch"]

    # An entry whose manifest never arrived (a push killed before it) is absent.
    convert_key = next(e["key"] for e in pushed.json()["entries"] if e["stage"] == "convert")
    (remote / "entries" / "convert" / f"{convert_key.split(':')[1]}.json").unlink()
    env_b = {"FORGE_HOME": str(tmp_path / "b"), "FORGE_REMOTE": remote.as_uri()}
    missing = forge("cache", "pull", convert_key, env=env_b)
    assert_clean_error(missing, 6, "no manifest for a key starting")
    # The recipe pulls what is there and stops at the hole (no error: nothing is damaged).
    partial = forge("cache", "pull", str(shared["recipe"]), "--json", env=env_b)
    assert partial.code == 0, partial.err
    assert [(e["stage"], e["status"]) for e in partial.json()["entries"]] == [
        ("fetch", "pulled"),
        ("convert", "absent"),
    ]
    # What a recipe pulled counts as its last build: gc keeps it.
    gc = forge("cache", "gc", "--dry-run", "--json", env=env_b)
    assert gc.code == 0 and gc.json()["removed"] == [], gc.out


def test_remote_folder_missing_warns_and_builds(shared: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    env = {"FORGE_HOME": str(tmp_path / "b"), "FORGE_REMOTE": (tmp_path / "nope").as_uri()}
    run = forge("build", str(shared["recipe"]), "--until", "fetch", env=env)
    assert run.code == 0, run.err
    assert "warning: remote cache" in run.err and "does not exist" in run.err
    assert_clean_error(forge("cache", "push", env=env), 6, "does not exist")


def test_bad_remote_settings(tmp_path: Path) -> None:
    env = {"FORGE_REMOTE": "s3://key:secret@bucket/x"}
    run = forge("cache", "push", env=env)
    assert_clean_error(run, 2, "must not carry credentials")
    assert "secret" not in run.err
    assert_clean_error(forge("cache", "pull", env={"FORGE_REMOTE": "gopher://x/y"}), 2, "file://")
    assert_clean_error(forge("cache", "pull", "zz", env={"FORGE_REMOTE": "file:///tmp"}), 2)
    assert_clean_error(forge("cache", "push"), 2, "no remote cache configured")


def test_s3_scheme_without_its_plugin_names_the_extra() -> None:
    # The plugin is installed in this venv; a registry reading another entry-point group
    # is exactly what forge sees when it is not.
    from trtllm_forge.store.remote import RemoteRegistry

    bare = RemoteRegistry(plugin_group="trtllm_forge.no-such-group")
    with pytest.raises(ForgeError, match="not installed") as info:
        bare.get("s3")
    assert info.value.code == 4 and "trtllm-forge[s3]" in (info.value.hint or "")


_NO_SDK = """
import sys
from pathlib import Path
from trtllm_forge import cli, api  # noqa: F401  (what `forge` imports)
from trtllm_forge.context import RunContext, Settings
root = Path(sys.argv[1])
ctx = RunContext(Settings(home=root / "home", remote=(root / "remote").as_uri()))
(root / "remote").mkdir()
moved = api.cache_push(ctx=ctx)
cloud = ("boto3", "botocore", "s3transfer", "google.cloud", "azure", "obstore", "fsspec", "gcsfs")
sdk = sorted(m for m in sys.modules if m.startswith(cloud))
print(len(moved), sdk)
"""


def test_core_with_file_remote_imports_no_cloud_sdk(shared: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    shutil.copytree(shared["a"], tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-c", _NO_SDK, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    count, sdk = proc.stdout.strip().split(" ", 1)
    assert int(count) == 3 and sdk == "[]"


def _remote_with(tmp_path: Path, manifest: dict) -> tuple:  # type: ignore[type-arg]
    """A file:// remote holding one hand-written manifest for convert/<key>."""
    from trtllm_forge.context import NullProgress
    from trtllm_forge.store.remote_file import FileRemote
    from trtllm_forge.store.store import Store
    from trtllm_forge.store.transfer import RemoteCache

    key = "blake3:" + "cd" * 32
    entry = tmp_path / "remote" / "entries" / "convert" / f"{'cd' * 32}.json"
    entry.parent.mkdir(parents=True)
    entry.write_text(json.dumps({"schema": 1, "stage": "convert", "key": key, **manifest}))
    store = Store(tmp_path / "home")
    return RemoteCache(store, FileRemote((tmp_path / "remote").as_uri()), NullProgress()), key


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ({"files": {"../../escape": {"size": 1, "digest": "blake3:" + "0" * 64}}}, "escapes"),
        ({"files": {"/etc/passwd": {"size": 1, "digest": "blake3:" + "0" * 64}}}, "escapes"),
        ({"files": {"a": {"size": 1, "digest": "sha256:" + "0" * 64}}}, "bad digest"),
        ({"files": {"a": {"size": 1, "digest": "blake3:../../x"}}}, "bad digest"),
        ({"files": {"a": {"size": -1, "digest": "blake3:" + "0" * 64}}}, "bad size"),
        ({"files": {}, "external": {"root": "../../../etc", "files": {}}}, "climbs out"),
        ({"files": []}, "lists no files"),
    ],
)
def test_hostile_remote_manifest_is_a_reported_miss(
    tmp_path: Path,
    manifest: dict,  # type: ignore[type-arg]
    reason: str,
) -> None:
    from trtllm_forge.store.transfer import Miss

    cache, key = _remote_with(tmp_path, manifest)
    got = cache.pull("convert", key)
    assert isinstance(got, Miss) and not got.absent and reason in got.reason
    assert not (tmp_path / "home" / "artifacts").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"home", "remote"}  # nothing escaped


def test_missing_blob_is_incomplete_and_file_put_if_absent(tmp_path: Path) -> None:
    from trtllm_forge.store.transfer import Miss

    cache, key = _remote_with(
        tmp_path, {"files": {"rank0.safetensors": {"size": 3, "digest": "blake3:" + "ab" * 32}}}
    )
    got = cache.pull("convert", key)
    assert isinstance(got, Miss) and "incomplete" in got.reason and "missing" in got.reason
    assert not any((tmp_path / "home" / "tmp").iterdir())  # the staging dir went away
    backend = cache.backend
    assert backend.put_if_absent("entries/x/y.json", b"first") is True
    assert backend.put_if_absent("entries/x/y.json", b"second") is False
    assert (tmp_path / "remote" / "entries" / "x" / "y.json").read_bytes() == b"first"
    assert not any((tmp_path / "remote" / "tmp").iterdir())


def test_fsspec_scheme_round_trip_and_missing_implementation(tmp_path: Path) -> None:
    """A scheme nobody registered falls back to fsspec: its in-memory filesystem is a
    real implementation (no network needed); gs:// without gcsfs names the package."""
    import uuid

    import fsspec

    from trtllm_forge.context import NullProgress
    from trtllm_forge.store.remote import open_remote
    from trtllm_forge.store.store import Artifact, Store
    from trtllm_forge.store.transfer import Miss, RemoteCache

    root = f"/forge-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    memory.mkdir(root)
    key = "blake3:" + "ef" * 32
    source = Store(tmp_path / "a")
    staging = source.new_staging_dir("convert", key)
    (staging / "rank0.safetensors").write_bytes(b"weights" * 1000)
    with source.lock(key):
        artifact = source.commit("convert", key, staging, {"inputs": {}})
    RemoteCache(source, open_remote(f"memory://{root}"), NullProgress()).push(artifact)

    pulled = RemoteCache(Store(tmp_path / "b"), open_remote(f"memory://{root}"), NullProgress())
    got = pulled.pull("convert", key)
    assert isinstance(got, Artifact)
    assert (got.path / "manifest.json").read_bytes() == (
        artifact.path / "manifest.json"
    ).read_bytes()

    digest = artifact.manifest["files"]["rank0.safetensors"]["digest"].split(":")[1]
    memory.pipe_file(f"{root}/blobs/{digest[:2]}/{digest}", b"weightz" * 1000)
    damaged = RemoteCache(Store(tmp_path / "c"), open_remote(f"memory://{root}"), NullProgress())
    miss = damaged.pull("convert", key)
    assert isinstance(miss, Miss) and "does not match its digest" in miss.reason

    import importlib.util

    assert importlib.util.find_spec("gcsfs") is None  # not in the lock
    with pytest.raises(ForgeError, match="fsspec implementation is not installed") as info:
        open_remote("gs://bucket/prefix")
    assert info.value.code == 4 and "gcsfs" in (info.value.hint or "")
