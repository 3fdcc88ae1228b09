"""Shared machinery of the reliability tier: the real CLI in subprocesses with
their own FORGE_HOME, an independent audit of a store, and the results files
that ``python -m tests.reliability.report`` turns into docs/reliability.md.

The audit deliberately re-implements what "a valid store" means from the
manifest format (blake3 over every file, no stat memo) instead of asking the
store code, so a store bug cannot vouch for itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("FORGE_RELIABILITY_RESULTS", ROOT / "build" / "reliability"))
FORGE = [sys.executable, "-m", "trtllm_forge"]
STAGES = ("fetch", "convert", "calibrate", "build", "verify")
KILLED = -signal.SIGKILL

# Keep subprocesses offline, single-threaded and free of anything secret from the caller.
_DROP = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "FORGE_DEBUG",
    "FORGE_FAULT",
    "FORGE_FAULT_LIST",
    "FORGE_FAULT_ACTION",
    "CI",
)
# onnxruntime silences its telemetry when it sees a CI runner (or its own opt-out): drop them
# so the footprint test sees what a user's machine sees, in CI too, and forge must opt out.
_DROP += (
    "ORT_DISABLE_TELEMETRY",
    "ORT_TELEMETRY_DISABLED",
    "ORT_RUNNING_UNIT_TESTS",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
    "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI",
)


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def text(self) -> str:
        return self.err + self.out


def code_root() -> Path:
    """Where subprocesses import forge (and this package) from.

    The tier's conftest points this at a snapshot of the tree taken when the
    session starts: a run takes many minutes, and edits landing meanwhile must
    not mix two versions of forge into one set of results.
    """
    return Path(os.environ.get("FORGE_RELIABILITY_CODE") or ROOT)


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env.update(
        {
            "FORGE_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": str(code_root()),
        }
    )
    env.update(extra)
    return env


def forge(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
    **popen: Any,
) -> Run:
    """Run the real CLI with ``FORGE_HOME=home`` (plus ``env``) and wait for it."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*FORGE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or code_root(),
        env={**base_env(home), **(env or {})},
        **popen,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)


def spawn(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the real CLI without waiting (concurrency and stop/kill tests)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - inherited by the child
    try:
        return subprocess.Popen(
            [*FORGE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or code_root(),
            env={**base_env(home), **(env or {})},
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def wait_for(predicate: Any, timeout: float = 600, what: str = "condition") -> None:
    """Poll ``predicate`` (an event: a log line, a process state) until true; the timeout is
    only a backstop, generous because the tier often shares a loaded 2-core machine."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def process_state(pid: int) -> str:
    """The one-letter state from /proc (``T`` = stopped, ``Z`` = zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


# -- recipes ------------------------------------------------------------------
# The reference build quantizes for real (ModelOpt AWQ on calibration text), so calibrate
# writes a checkpoint of its own: its kill points, disk errors and damage are all exercised.
# Few short sequences keep it a few seconds on a CPU; group 32 divides the tiny hidden size.
REAL_QUANTIZE = {"method": "awq", "group_size": 32, "calibration": {"samples": 8, "seq_len": 32}}


def tiny_recipe(
    path: Path, model: Path, *, name: str = "rel", dtype: str = "float16", **sections: Any
) -> Path:
    """The tiny-llama default recipe, pointed at ``model``, small limits."""
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "source": {"path": str(model)},
        "convert": {"dtype": dtype},
        "quantize": {"method": "none"},
        "build": {
            "backend": "onnxruntime",
            "max_batch_size": 2,
            "max_input_len": 32,
            "max_seq_len": 64,
        },
        "verify": {
            "prompts": ["The quick brown fox", "Hello world"],
            "max_new_tokens": 4,
            "max_text_tokens": 32,
        },
    }
    doc.update(sections)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- store audit ----------------------------------------------------------------
def file_digest(path: Path) -> str:
    return "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()


def audit_store(home: Path) -> list[str]:
    """Every problem with the visible store: each dir under artifacts/ must hold a
    manifest naming exactly its files, with matching sizes and digests."""
    problems: list[str] = []
    base = home / "artifacts"
    for entry in sorted(base.glob("*/*")) if base.exists() else []:
        problems += [f"{entry.parent.name}/{entry.name[:12]}: {p}" for p in _audit_entry(entry)]
    return problems


def _audit_entry(entry: Path) -> list[str]:
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"no readable manifest ({exc})"]
    problems = []
    if manifest.get("stage") != entry.parent.name or manifest.get("key") != f"blake3:{entry.name}":
        problems.append("manifest names another stage/key")
    on_disk = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()}
    listed = set(manifest.get("files", {}))
    if on_disk - {"manifest.json"} != listed:
        problems.append(
            f"files differ from manifest: {sorted(on_disk ^ listed ^ {'manifest.json'})}"
        )
    for name, meta in manifest.get("files", {}).items():
        file = entry / name
        if not file.is_file():
            continue
        if file.stat().st_size != meta["size"] or file_digest(file) != meta["digest"]:
            problems.append(f"{name} does not match its manifest")
    return problems


def store_entries(home: Path) -> dict[tuple[str, str], str]:
    """(stage, key) → content digest of every visible artifact."""
    out = {}
    for manifest_file in sorted((home / "artifacts").glob("*/*/manifest.json")):
        manifest = json.loads(manifest_file.read_text())
        out[(manifest["stage"], manifest["key"])] = manifest["content_digest"]
    return out


def build_results(run: Run) -> dict[str, tuple[str, str]]:
    """stage → (key, content digest) from a successful ``forge build --json``."""
    assert run.code == 0, run.text
    out = {}
    for stage in run.json()["stages"]:
        manifest = json.loads((Path(stage["path"]) / "manifest.json").read_text())
        out[stage["stage"]] = (stage["key"], manifest["content_digest"])
    return out


def staging_leftovers(home: Path) -> list[str]:
    """Names of half-written things: staging dirs in tmp/ and refs/*.tmp."""
    tmp = home / "tmp"
    names = [p.name for p in tmp.iterdir()] if tmp.exists() else []
    return sorted(names + [p.name for p in (home / "refs").glob("*.tmp")])


def ls_problems(home: Path) -> list[str]:
    """What ``forge cache ls --json`` says is wrong, plus disagreements with the directory."""
    run = forge(home, "cache", "ls", "--json")
    if run.code != 0:
        return [f"forge cache ls exited {run.code}: {run.text[-500:]}"]
    listed = run.json()["artifacts"]
    problems = [
        f"ls: {a['stage']} {a['key'][:19]}: {a['problem']}" for a in listed if not a["valid"]
    ]
    dirs = {str(p) for p in (home / "artifacts").glob("*/*")}
    if {a["path"] for a in listed} != dirs:
        problems.append("ls does not list exactly the artifact directories")
    return problems


# -- results for docs/reliability.md --------------------------------------------
def record(section: str, data: dict[str, Any]) -> None:
    """Write one section's figures; ``python -m tests.reliability.report`` renders them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"section": section, "unix": round(time.time()), **data}
    tmp = RESULTS / f".{section}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS / f"{section}.json")
