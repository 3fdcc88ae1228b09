"""Fuzzed manifests (issue 17): a store entry's manifest.json edited by hand, damaged,
or written by a hostile peer (a pulled remote entry is installed from its manifest)
is read as a valid artifact or refused as damage — never another exception, never
a hang: a manifest's files are hashed only when they are regular files of the size
it promises, inside its root. The reading code is the store's own (lookup, deep
verify, ls, gc's dry run); a sample also goes through `forge cache verify` and
`forge build`, which rebuilds what the manifest damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import tracing
from tests.reliability.harness import build_results, forge, record, tiny_recipe
from trtllm_forge.errors import ForgeError
from trtllm_forge.store import maintenance
from trtllm_forge.store.store import Artifact, Invalid, Store

pytestmark = pytest.mark.reliability

FLOOR = 5_000
EXAMPLES = max(FLOOR, int(os.environ.get("FORGE_MANIFEST_FUZZ_EXAMPLES", FLOOR)))
CLI_EXAMPLES = 12
HANG_SECONDS = 20  # one example reads at most a few small files

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**30, 0.5, float("inf")]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["blake3:" + "0" * 64, "config.json", "fetch", "convert", "\x00", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
# Roots and names a hostile manifest may point at: devices, pseudo-files, the file
# system's root, climbs out of the store, a FIFO (made by the fixture), NUL bytes.
ROOTS = ["/dev", "/proc/self", "/sys", "/", "..", "../../..", "", "\x00", "fifo-dir", "/etc"]
NAMES = ["zero", "environ", "fifo", "../x", "/etc/passwd", "a/../../b", "", ".", "\x00a", "passwd"]


@st.composite
def manifests(draw: st.DrawFn, originals: dict[str, dict[str, Any]]) -> tuple[str, Any]:
    """(stage, what to write as its manifest): a mutated real manifest, or raw bytes."""
    stage = draw(st.sampled_from(sorted(originals)))
    if draw(st.integers(0, 19)) == 0:
        return stage, draw(st.binary(max_size=64) | st.just(b"[" * 100_000))
    doc = json.loads(json.dumps(originals[stage]))
    for _ in range(draw(st.integers(1, 4))):
        _mutate(draw, doc)
    return stage, doc


def _mutate(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    op = draw(st.sampled_from(["set", "set", "delete", "root", "name", "size", "deep"]))
    parent, field = _somewhere(draw, doc)
    if op == "set":
        parent[field] = draw(values)
    elif op == "delete":
        parent.pop(field, None)
    elif op == "root":
        doc["external"] = {
            **(_dict(doc.get("external")) or {"files": {}}),
            "root": draw(st.sampled_from(ROOTS)),
        }
    elif op == "name":
        listing = draw(st.sampled_from([doc.get("files"), _dict(doc.get("external")).get("files")]))
        if isinstance(listing, dict):
            listing[draw(st.sampled_from(NAMES))] = {
                "size": draw(st.integers(-1, 64)),
                "digest": "x",
            }
    elif op == "size":
        for meta in _file_metas(doc):
            meta["size"] = draw(st.sampled_from([0, -1, 2**63, 10**30, "1", None, 1.5, True]))
    else:
        parent[field] = json.loads("[" * 50 + "]" * 50)


def _somewhere(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A dict inside ``doc`` and one of its keys (or a new one)."""
    parent = doc
    while True:
        children = [k for k, v in parent.items() if isinstance(v, dict) and v]
        if not children or draw(st.booleans()):
            break
        parent = parent[draw(st.sampled_from(sorted(children)))]
    keys = sorted(parent) or ["new"]
    return parent, draw(st.sampled_from([*keys, "new"]))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _file_metas(doc: dict[str, Any]) -> list[dict[str, Any]]:
    listings = [doc.get("files"), _dict(doc.get("external")).get("files")]
    return [
        m for lst in listings if isinstance(lst, dict) for m in lst.values() if isinstance(m, dict)
    ]


@contextmanager
def _no_hang(what: Any) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reading a manifest hung: {what!r}"[:300])

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def built(
    rel_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, dict[str, str]]:
    """A real store holding a fetch (external files) and a convert (own files) artifact."""
    work = tmp_path_factory.mktemp("manifest-fuzz")
    recipe = tiny_recipe(work / "recipe.yaml", rel_model)
    run = forge(work / "home", "build", str(recipe), "--until", "convert", "--json")
    assert run.code == 0, run.text
    keys = {stage: key for stage, (key, _digest) in build_results(run).items()}
    (work / "home" / "fifo-dir").mkdir()
    os.mkfifo(work / "home" / "fifo-dir" / "fifo")  # never opened for writing
    return work / "home", recipe, keys


def test_fuzzed_manifests_are_read_or_refused_as_damage(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    home, recipe, keys = built
    store = Store(home)
    paths = {stage: store.artifact_dir(stage, key) / "manifest.json" for stage, key in keys.items()}
    originals = {stage: json.loads(path.read_text()) for stage, path in paths.items()}
    outcomes = {"valid": 0, "damaged": 0}
    damaged: list[tuple[str, Any]] = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(manifests(originals), st.booleans())
    def prop(case: tuple[str, Any], deep: bool) -> None:
        stage, doc = case
        _write(paths[stage], doc)
        try:
            with _no_hang(doc):
                found = store.lookup(stage, keys[stage], deep=deep)
                listed = maintenance.entries(store)
                maintenance.gc(store, dry_run=True)
        except ForgeError:  # the store's own refusals are user errors, not bugs
            found = Invalid("refused")
            listed = []
        finally:
            _write(paths[stage], originals[stage])
        assert isinstance(found, Artifact | Invalid), found
        assert all(isinstance(e, maintenance.Entry) for e in listed)
        if isinstance(found, Artifact):
            outcomes["valid"] += 1
        else:
            outcomes["damaged"] += 1
            if len(damaged) < CLI_EXAMPLES and not isinstance(doc, bytes):
                damaged.append((stage, doc))

    prop()
    cli = _through_cli(tmp_path, home, recipe, keys, damaged)
    record("manifest_fuzz", {"cases": sum(outcomes.values()), **outcomes, "cli": cli})
    assert sum(outcomes.values()) >= EXAMPLES >= FLOOR
    assert outcomes["valid"] > 0 and outcomes["damaged"] > 0


def _write(path: Path, doc: Any) -> None:
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(json.dumps(doc))


def _through_cli(
    tmp_path: Path, home: Path, recipe: Path, keys: dict[str, str], cases: list[tuple[str, Any]]
) -> int:
    """Damaging manifests in a copy of the store: `cache verify` says damaged (exit 6,
    under strace: no write outside FORGE_HOME); every third case, `build` rebuilds."""
    for i, (stage, doc) in enumerate(cases):
        copy = tmp_path / f"cli{i}" / "home"
        shutil.copytree(home, copy, ignore=shutil.ignore_patterns("fifo-dir"))
        _write(Store(copy).artifact_dir(stage, keys[stage]) / "manifest.json", doc)
        if tracing.available():
            run, written = tracing.traced_forge(copy, "cache", "verify", timeout=120)
            assert tracing.outside(written, copy) == [], "wrote outside FORGE_HOME"
        else:
            run = forge(copy, "cache", "verify", timeout=120)
        assert run.code == 6 and "damaged" in run.text, (doc, run.text)
        assert "Traceback" not in run.text and "internal error" not in run.text, run.text
        if i % 3 == 0:
            rebuilt = forge(copy, "build", str(recipe), "--until", "convert", "--json", timeout=300)
            assert rebuilt.code == 0, (doc, rebuilt.text)
            assert {s: k for s, (k, _d) in build_results(rebuilt).items()} == keys
    return len(cases)
