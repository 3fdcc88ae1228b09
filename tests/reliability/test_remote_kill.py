"""The remote cache under SIGKILL, against a real S3-compatible server (moto, over HTTP).

The tier's reference store (a real AWQ build of the tiny model) is pushed and pulled by
real `forge cache push|pull RECIPE` subprocesses that kill themselves at fault points
(``trtllm_forge.faults``): after every blob, just before and after the manifest, after
every downloaded file, before the pulled entry is installed, and just before its
rename. After each kill:

- the remote holds only complete entries: every manifest there names blobs that exist
  with their size and blake3 digest (read back independently of forge);
- the local store shows no partial entry (each artifact dir matches its manifest);
- a rerun completes and leaves exactly the reference's entries, byte for byte.

And the "runs nothing" promise on the whole recipe: a fresh FORGE_HOME building the
reference recipe pulls every stage (verify included) and starts none.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import KILLED, audit_store, forge
from tests.s3server import S3Server, s3_server

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.client().create_bucket(Bucket="forge")
        yield server


@pytest.fixture()
def source(reference: Reference, tmp_path: Path) -> Path:
    """A private copy of the reference store (pushing appends to its event log)."""
    home = tmp_path / "source"
    shutil.copytree(reference.home, home)
    return home


def _tree(home: Path) -> dict[str, bytes]:
    base = home / "artifacts"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def _remote_problems(s3: S3Server, prefix: str) -> tuple[set[str], list[str]]:
    """(entries visible on the remote, problems with any of them), read with boto3 alone."""
    client = s3.client()
    listed = client.list_objects_v2(Bucket="forge", Prefix=f"{prefix}/entries/").get("Contents", [])
    seen, problems = set(), []
    for obj in listed:
        manifest = json.loads(client.get_object(Bucket="forge", Key=obj["Key"])["Body"].read())
        seen.add(f"{manifest['stage']}/{manifest['key']}")
        for name, meta in manifest["files"].items():
            hexd = meta["digest"].split(":")[1]
            try:
                data = client.get_object(Bucket="forge", Key=f"{prefix}/blobs/{hexd[:2]}/{hexd}")
            except client.exceptions.NoSuchKey:
                problems.append(f"{obj['Key']}: blob of {name} missing")
                continue
            body = data["Body"].read()
            if len(body) != meta["size"] or blake3.blake3(body).hexdigest() != hexd:
                problems.append(f"{obj['Key']}: blob of {name} does not match")
    return seen, problems


def _points(home: Path, s3: S3Server, prefix: str, recipe: Path, command: str) -> Counter[str]:
    """How often an uninterrupted push/pull passes each remote fault point."""
    listing = home.parent / f"{command}-points.txt"
    env = {**s3.env(prefix=prefix), "FORGE_FAULT_LIST": str(listing)}
    run = forge(home, "cache", command, str(recipe), env=env)
    assert run.code == 0, run.text
    return Counter(p for p in listing.read_text().split() if p.startswith(("remote.", "store.")))


def _spread(counts: Counter[str], name: str) -> list[str]:
    """``name`` at its first, middle and last hit."""
    n = counts[name]
    assert n > 0, f"{name} never reached: {sorted(counts)}"
    return [f"{name}:{k}" for k in sorted({1, (n + 1) // 2, n})]


def test_fresh_home_builds_the_whole_recipe_from_the_remote(
    s3: S3Server, reference: Reference, source: Path, tmp_path: Path
) -> None:
    pushed = forge(source, "cache", "push", str(reference.recipe), env=s3.env(prefix="whole"))
    assert pushed.code == 0, pushed.text
    home = tmp_path / "b"
    run = forge(
        home,
        "build",
        str(reference.recipe),
        "--until",
        reference.until,
        "--json",
        env=s3.env(prefix="whole"),
    )
    assert run.code == 0, run.text
    assert {s["status"] for s in run.json()["stages"]} == {"pulled"}
    events = [json.loads(x) for x in (home / "log" / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "start"] == []
    assert _tree(home) == _tree(reference.home)


def test_kill_during_push_never_shows_half_an_entry(
    s3: S3Server, reference: Reference, source: Path
) -> None:
    counts = _points(source, s3, "push-probe", reference.recipe, "push")
    points = [
        *_spread(counts, "remote.push.after_blob"),
        "remote.push.before_manifest:1",
        "remote.push.after_manifest:1",
        f"remote.push.before_manifest:{counts['remote.push.before_manifest']}",
    ]
    expected = {f"{s}/{k}" for s, k in reference.entries_until(reference.until)}
    for i, point in enumerate(points):
        prefix = f"push-kill-{i}"
        killed = forge(
            source,
            "cache",
            "push",
            str(reference.recipe),
            env={**s3.env(prefix=prefix), "FORGE_FAULT": point},
        )
        assert killed.code == KILLED, f"{point}: {killed.text}"
        visible, problems = _remote_problems(s3, prefix)
        assert problems == [], point
        assert visible < expected, point  # something is missing: the kill did interrupt
        rerun = forge(source, "cache", "push", str(reference.recipe), env=s3.env(prefix=prefix))
        assert rerun.code == 0, f"{point}: {rerun.text}"
        visible, problems = _remote_problems(s3, prefix)
        assert (visible, problems) == (expected, []), point


def test_kill_during_pull_never_shows_half_an_entry(
    s3: S3Server, reference: Reference, source: Path, tmp_path: Path
) -> None:
    assert (
        forge(source, "cache", "push", str(reference.recipe), env=s3.env(prefix="pull")).code == 0
    )
    counts = _points(tmp_path / "probe", s3, "pull", reference.recipe, "pull")
    points = [
        *_spread(counts, "remote.pull.after_file"),
        "remote.pull.before_install:1",
        f"remote.pull.before_install:{counts['remote.pull.before_install']}",
        "store.commit.build.before_rename:1",
    ]
    want = {k: v for k, v in _tree(reference.home).items()}
    for i, point in enumerate(points):
        home = tmp_path / f"b{i}"
        env = {**s3.env(prefix="pull"), "FORGE_FAULT": point}
        killed = forge(home, "cache", "pull", str(reference.recipe), env=env)
        assert killed.code == KILLED, f"{point}: {killed.text}"
        assert audit_store(home) == [], point
        assert _tree(home) != want, point  # the kill did interrupt
        rerun = forge(home, "cache", "pull", str(reference.recipe), env=s3.env(prefix="pull"))
        assert rerun.code == 0, f"{point}: {rerun.text}"
        assert audit_store(home) == [] and _tree(home) == want, point


def test_two_runners_building_at_once_share_one_remote(
    s3: S3Server, reference: Reference, tmp_path: Path
) -> None:
    """Two fresh runners build the reference recipe at the same moment against one empty
    prefix: each stage either runs or is pulled on each runner, the remote ends with one
    complete entry per key, and both runners end with the reference's keys."""
    from tests.reliability.harness import spawn

    env = s3.env(prefix="together")
    args = ("build", str(reference.recipe), "--until", reference.until, "--json")
    homes = [tmp_path / "r1", tmp_path / "r2"]
    procs = [spawn(home, *args, env=env, log=tmp_path / f"{home.name}.log") for home in homes]
    for proc in procs:
        assert proc.wait(timeout=1800) == 0, (tmp_path / "r1.log").read_text()[-2000:]
    expected = {f"{s}/{k}" for s, k in reference.entries_until(reference.until)}
    visible, problems = _remote_problems(s3, "together")
    assert problems == [] and visible == expected
    for home in homes:
        assert audit_store(home) == []
        keys = {f"{p.parent.name}/blake3:{p.name}" for p in (home / "artifacts").glob("*/*")}
        assert keys == expected
