"""What a build leaves behind, and what it never writes down.

- Footprint: a full build writes under $FORGE_HOME only (seen by strace);
  TMPDIR may hold scratch files while it runs, and nothing after, not even an empty dir.
- Secrets: with HF_TOKEN set, a build from the hub cache puts the token in no
  manifest, key, ref, event, report, memo or CLI output — not even a verbose
  traceback of a failed build.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.reliability import tracing
from tests.reliability.conftest import Reference
from tests.reliability.harness import REAL_QUANTIZE, forge, record, tiny_recipe
from tests.test_fetch_hf import sha_like, write_hub_snapshot

pytestmark = pytest.mark.reliability

SECRET = "hf_RELIABILITYfakeTOKEN0123456789abcdef"
REPO = "forge-rel/tiny-llama"


@pytest.mark.skipif(not tracing.available(), reason="strace is not installed")
def test_full_build_writes_only_under_forge_home(reference: Reference, tmp_path: Path) -> None:
    sandbox = {name: tmp_path / name for name in ("home-dir", "tmp-dir", "cwd")}
    for path in sandbox.values():
        path.mkdir()
    home = tmp_path / "forge-home"
    env = {"HOME": str(sandbox["home-dir"]), "TMPDIR": str(sandbox["tmp-dir"])}
    run, written = tracing.traced_forge(
        home,
        "build",
        str(reference.recipe),
        "--until",
        reference.until,
        env=env,
        cwd=sandbox["cwd"],
    )
    assert run.code == 0, run.text
    leftovers = [
        p.replace(str(sandbox["home-dir"]), "$HOME").replace(str(sandbox["tmp-dir"]), "$TMPDIR")
        for p in tracing.outside(written, home)
        if _persists(Path(p), sandbox["tmp-dir"])
    ]
    record("footprint", {"writes_outside_forge_home": leftovers})
    assert leftovers == []


@pytest.mark.skipif(not tracing.available(), reason="strace is not installed")
def test_onnxruntime_telemetry_is_off_unless_the_user_opts_in(tmp_path: Path) -> None:
    """The write the footprint test guards against is real, seen by the trace, and forge stops it.

    onnxruntime writes its telemetry device id and event queue under
    ~/.cache/Microsoft as it loads; forge imports it with ORT_DISABLE_TELEMETRY=1
    unless the user set that variable (an explicit ``0`` is their opt-in).
    """
    code = (
        "import sys\nfrom trtllm_forge.engine.runtime import _import_onnxruntime\n"
        "_import_onnxruntime()\nassert 'onnxruntime' in sys.modules\n"
    )
    found = {}
    for label, extra in (("forge", {}), ("opted-in", {"ORT_DISABLE_TELEMETRY": "0"})):
        home_dir = tmp_path / label
        home_dir.mkdir()
        env = {"HOME": str(home_dir), **extra}
        run, written = tracing.traced(
            tmp_path / "forge-home", [sys.executable, "-c", code], env=env
        )
        assert run.code == 0, run.text
        found[label] = [
            p.replace(str(home_dir), "$HOME")
            for p in tracing.outside(written)
            if Path(p).is_relative_to(home_dir)
        ]
    assert found["forge"] == []
    # The trace sees the write when telemetry is on; if this ever fails, onnxruntime stopped
    # writing there and docs/reliability.md ("Writes by libraries forge uses") needs updating.
    assert any(".cache/Microsoft" in p for p in found["opted-in"]), found


def _persists(path: Path, tmp_dir: Path) -> bool:
    """Scratch files in TMPDIR that are gone do not count; anything left does, empty
    directories too (torch's inductor left an empty $TMPDIR/torchinductor_<user>)."""
    if path.is_relative_to(tmp_dir):
        return path.exists()
    return True


@pytest.fixture
def hub(reference: Reference, tmp_path: Path) -> Path:
    files = {p.name: p.read_bytes() for p in reference.model.iterdir() if p.is_file()}
    cache = tmp_path / "hf-cache"
    write_hub_snapshot(cache, REPO, files, commit=sha_like("reliability"))
    return cache


def test_hf_token_is_never_written_or_printed(
    reference: Reference, tmp_path: Path, hub: Path
) -> None:
    home = tmp_path / "home"
    recipe = tiny_recipe(
        tmp_path / "recipe.yaml",
        reference.model,
        source={"hf": REPO, "revision": "main"},
        quantize=REAL_QUANTIZE,
    )
    env = {"HF_TOKEN": SECRET, "HUGGING_FACE_HUB_TOKEN": SECRET, "HF_HUB_CACHE": str(hub)}
    outputs = []
    for args in (
        ("build", str(recipe), "--until", reference.until, "--json"),
        ("build", str(recipe), "--until", reference.until),
        ("plan", str(recipe), "--json"),
        ("cache", "ls", "--json"),
        ("cache", "verify"),
        ("recipe", "show", str(recipe)),
    ):
        run = forge(home, *args, env=env)
        assert run.code == 0, run.text
        outputs.append(run.text)
    bad = tiny_recipe(
        tmp_path / "bad.yaml", reference.model, source={"hf": REPO, "revision": "no-such-branch"}
    )
    failed = forge(home, "-v", "build", str(bad), "--until", "convert", env=env)
    assert failed.code == 5, failed.text
    outputs.append(failed.text)
    leaks = [f"output of command {i}" for i, text in enumerate(outputs) if SECRET in text]
    files = [p for p in home.rglob("*") if p.is_file()]
    leaks += [str(p.relative_to(home)) for p in files if SECRET.encode() in p.read_bytes()]
    kinds = sorted({p.relative_to(home).parts[0] for p in files})
    record(
        "secrets",
        {
            "files_scanned": len(files),
            "outputs_scanned": len(outputs),
            "leaks": leaks,
            "areas": kinds,
        },
    )
    assert {"artifacts", "refs", "log"} <= set(kinds)  # the scan covered manifests, refs and events
    assert leaks == []
    fetch = json.loads(next((home / "artifacts" / "fetch").glob("*/manifest.json")).read_text())
    assert fetch["info"]["repo"] == REPO  # the build really came from the hub cache
