"""The S3 plugin (plugins/forge-s3) against a real S3-compatible server over HTTP.

moto's standalone server runs in a subprocess on a free localhost port; forge talks
to it through boto3 exactly as it would to AWS (endpoint from AWS_ENDPOINT_URL_S3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import FORGE, assert_clean_error, forge, write_recipe
from tests.s3server import S3Server, s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.client().create_bucket(Bucket="forge")
        yield server


@pytest.fixture(scope="module")
def first(s3: S3Server, tmp_path_factory: pytest.TempPathFactory, tiny_models: dict) -> dict:  # type: ignore[type-arg]
    """The tiny recipe built (and pushed) by runner A, up to the engine; verify's run of
    transformers is left to the reliability tier's full-recipe test (tests/reliability/
    test_remote_kill.py) to keep this tier fast."""
    root = tmp_path_factory.mktemp("s3-a")
    recipe = write_recipe(
        root / "r.yaml",
        source={"path": str(tiny_models["llama"])},
        convert={"dtype": "float32"},
        build={"max_batch_size": 2, "max_input_len": 32, "max_seq_len": 64},
        verify={"prompts": ["Hello world"], "max_new_tokens": 4, "max_text_tokens": 32},
    )
    env = {**s3.env(), "FORGE_HOME": str(root / "a")}
    run = forge("build", str(recipe), "--until", "build", "--json", env=env)
    assert run.code == 0, run.err
    return {"recipe": recipe, "home": root / "a", "run": run.json()}


def _events(home: Path) -> list[dict]:  # type: ignore[type-arg]
    path = home / "log" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _tree(home: Path) -> dict[str, bytes]:
    base = home / "artifacts"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def test_second_runner_downloads_everything_and_runs_no_stage(
    s3: S3Server,
    first: dict,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    home = tmp_path / "b"
    env = {**s3.env(), "FORGE_HOME": str(home)}
    run = forge("build", str(first["recipe"]), "--until", "build", "--json", env=env)
    assert run.code == 0, run.err
    stages = run.json()["stages"]
    assert [s["status"] for s in stages] == ["pulled"] * 4
    assert [s["key"] for s in stages] == [s["key"] for s in first["run"]["stages"]]
    events = _events(home)
    assert [e for e in events if e["event"] == "start"] == []
    assert sorted(e["stage"] for e in events if e["event"] == "pull") == sorted(
        ["fetch", "convert", "calibrate", "build"]
    )
    assert _tree(home) == _tree(first["home"])  # every artifact, the shard too, byte for byte


def test_flipped_byte_on_the_server_is_detected_on_pull(
    s3: S3Server,
    first: dict,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    client = s3.client()
    build = next(s for s in first["run"]["stages"] if s["stage"] == "build")
    manifest = json.loads((Path(build["path"]) / "manifest.json").read_text())
    # The engine's own largest file: its link to the shard's rank file is the shard's blob
    # too, and the shard (pulled first) would report that damage under its own name.
    own = {n: m for n, m in manifest["files"].items() if not n.endswith(".safetensors")}
    name, meta = max(own.items(), key=lambda kv: kv[1]["size"])
    digest = meta["digest"].split(":")[1]
    key = f"ci/blobs/{digest[:2]}/{digest}"
    good = client.get_object(Bucket="forge", Key=key)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0x40
    client.put_object(Bucket="forge", Key=key, Body=bytes(bad))
    try:
        home = tmp_path / "b"
        pulled = forge("cache", "pull", build["key"], env={**s3.env(), "FORGE_HOME": str(home)})
        assert_clean_error(pulled, 6, f"{name} does not match its digest")
        assert not (home / "artifacts" / "build").exists() or not any(
            (home / "artifacts" / "build").iterdir()
        )
        assert not any((home / "tmp").iterdir())  # the staging dir is gone too
    finally:
        client.put_object(Bucket="forge", Key=key, Body=good)


def test_two_concurrent_pushes_of_one_key_leave_one_valid_entry(
    s3: S3Server,
    first: dict,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """Both pushers upload every blob, both are held just before the manifest, then both
    race to publish it: If-None-Match lets exactly one write; the entry pulls cleanly."""
    env = {**s3.env(prefix="race"), "FORGE_HOME": str(first["home"])}
    build_key = next(s["key"] for s in first["run"]["stages"] if s["stage"] == "build")
    stop = {"FORGE_FAULT": "remote.push.before_manifest", "FORGE_FAULT_ACTION": "stop"}
    procs = [
        subprocess.Popen(
            [*FORGE, "cache", "push", build_key, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env, **stop},
        )
        for _ in range(2)
    ]
    try:
        # The shard is pushed first (the build references it): each pusher stops there first.
        for proc in procs:
            _wait_stopped(proc.pid)
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)  # the point fires only on its first hit
        outs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    statuses = [{e["stage"]: e["status"] for e in json.loads(out)["entries"]} for out, _ in outs]
    assert sorted(s["shard"] for s in statuses) == ["already", "pushed"]
    listed = s3.client().list_objects_v2(Bucket="forge", Prefix="race/entries/")["Contents"]
    assert sorted(o["Key"].split("/")[2] for o in listed) == ["build", "shard"]
    home = tmp_path / "b"
    pulled = forge(
        "cache", "pull", build_key, "--json", env={**s3.env(prefix="race"), "FORGE_HOME": str(home)}
    )
    assert pulled.code == 0, pulled.err
    assert _tree(home) == {
        k: v for k, v in _tree(first["home"]).items() if k.startswith(("build/", "shard/"))
    }


def _wait_stopped(pid: int, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never reached its fault point")


class _Steps:
    """A Progress that records every advance (to see a transfer report in steps)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[_Steps]:
        yield self

    def advance(self, amount: float = 1.0) -> None:
        self.steps.append(int(amount))


def test_large_file_moves_in_parts(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 MiB file with 5 MiB parts: a real multipart upload, progress in steps."""
    from trtllm_forge_s3.backend import S3Remote

    from trtllm_forge.store.store import Store
    from trtllm_forge.store.transfer import RemoteCache

    for name, value in {**s3.env(prefix="big"), "FORGE_S3_PART_SIZE_MB": "5"}.items():
        monkeypatch.setenv(name, value)
    key = "blake3:" + "ab" * 32
    store = Store(tmp_path / "a")
    staging = store.new_staging_dir("convert", key)
    payload = os.urandom(12 << 20)
    (staging / "rank0.safetensors").write_bytes(payload)
    with store.lock(key):
        artifact = store.commit("convert", key, staging, {"inputs": {}})
    up = _Steps()
    RemoteCache(store, S3Remote("s3://forge/big"), up).push(artifact)
    digest = artifact.manifest["files"]["rank0.safetensors"]["digest"].split(":")[1]
    head = s3.client().head_object(Bucket="forge", Key=f"big/blobs/{digest[:2]}/{digest}")
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: 3 parts
    assert sum(up.steps) == len(payload) and len(up.steps) > 1

    down = _Steps()
    pulled = RemoteCache(Store(tmp_path / "b"), S3Remote("s3://forge/big"), down).pull(
        "convert", key
    )
    assert (pulled.path / "rank0.safetensors").read_bytes() == payload  # type: ignore[union-attr]
    assert sum(down.steps) == len(payload)


# -- bad input: each a clear error with its exit code; builds survive a dead remote --
def test_unreachable_endpoint(first: dict, s3: S3Server, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from tests.s3server import free_port

    env = {
        **s3.env(),
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
        "FORGE_HOME": str(tmp_path / "h"),
    }
    assert_clean_error(forge("cache", "pull", env=env), 6, "cannot reach the S3 endpoint")
    run = forge("build", str(first["recipe"]), "--until", "convert", "--json", env=env)
    assert run.code == 0, run.err
    assert "warning: remote cache" in run.err
    assert [s["status"] for s in run.json()["stages"]] == ["built", "built"]


def test_missing_bucket(s3: S3Server, tmp_path: Path) -> None:
    env = {**s3.env(bucket="no-such-bucket"), "FORGE_HOME": str(tmp_path / "h")}
    assert_clean_error(forge("cache", "push", env=env), 6, "'no-such-bucket' does not exist")


def test_wrong_credentials(s3: S3Server, tmp_path: Path) -> None:
    env = {**s3.env(), "FORGE_HOME": str(tmp_path / "h")}
    s3.enforce_auth(True)  # moto now accepts only keys its IAM issued: ours are wrong
    try:
        run = forge("cache", "pull", env=env)
    finally:
        s3.enforce_auth(False)
    assert_clean_error(run, 6, "S3 refused the credentials")
    assert "forge-test-secret" not in run.err + run.out


def test_entry_without_manifest(s3: S3Server, first: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """Blobs uploaded, manifest never written (a push killed before its last step)."""
    env = {**s3.env(prefix="partial"), "FORGE_HOME": str(first["home"])}
    convert = next(s for s in first["run"]["stages"] if s["stage"] == "convert")
    kill = {"FORGE_FAULT": "remote.push.before_manifest"}
    assert forge("cache", "push", convert["key"], env={**env, **kill}).code == -signal.SIGKILL
    env_b = {**s3.env(prefix="partial"), "FORGE_HOME": str(tmp_path / "b")}
    assert_clean_error(forge("cache", "pull", convert["key"], env=env_b), 6, "no manifest")


_UPLOAD = """
import sys
from pathlib import Path
from trtllm_forge_s3.backend import S3Remote
S3Remote("s3://forge/resume").upload(Path(sys.argv[1]), "blobs/aa/big", lambda n: None)
"""


def test_killed_multipart_upload_is_resumed(s3: S3Server, tmp_path: Path) -> None:
    """A process killed after its second part leaves an unfinished upload; the next
    upload of the same blob sends only the parts S3 does not have, then completes."""
    from trtllm_forge_s3.backend import S3Remote

    env = {**s3.env(prefix="resume"), "FORGE_S3_PART_SIZE_MB": "5"}
    big = tmp_path / "big"
    # 6 parts (5 x 5 + 2 MiB). At the kill, 2 parts are done and at most 3 more are in
    # flight (4 workers), which the server may still finish: 2 to 5 parts arrive.
    big.write_bytes(os.urandom(27 << 20))
    killed = subprocess.run(
        [sys.executable, "-c", _UPLOAD, str(big)],
        env={**os.environ, **env, "FORGE_FAULT": "remote.s3.after_part:2"},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    client = s3.client()
    (upload,) = client.list_multipart_uploads(Bucket="forge", Prefix="resume/")["Uploads"]
    before = client.list_parts(Bucket="forge", Key=upload["Key"], UploadId=upload["UploadId"])
    arrived = len(before["Parts"])
    assert 2 <= arrived <= 5
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        remote = S3Remote("s3://forge/resume")
        remote.upload(big, "blobs/aa/big", lambda n: None)
    assert remote.parts_sent == 6 - arrived
    assert client.list_multipart_uploads(Bucket="forge", Prefix="resume/").get("Uploads", []) == []
    body = client.get_object(Bucket="forge", Key="resume/blobs/aa/big")["Body"].read()
    assert body == big.read_bytes()
