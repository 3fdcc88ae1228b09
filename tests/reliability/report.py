"""Render docs/reliability.md from the figures the reliability tier wrote.

    make test-reliability                  # writes build/reliability/*.json
    python -m tests.reliability.report     # → docs/reliability.md
    FORGE_RELIABILITY_RESULTS=DIR python -m tests.reliability.report --rows test_x.py
                                           # only test_x.py's rows, from a run of that file

Every figure in the page comes from the last run's JSON; a section whose test
did not run says so instead of showing stale numbers from memory.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.reliability.harness import RESULTS, ROOT, STAGES

DOC = ROOT / "docs" / "reliability.md"
T = "tests/reliability"


def load(results: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for file in sorted(results.glob("*.json")):
        doc = json.loads(file.read_text())
        out[doc["section"]] = doc
    return out


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix))


class Figures:
    """Looks up figures; a missing section renders as 'not run'."""

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data

    def __call__(self, section: str, render: Any) -> str:
        doc = self.data.get(section)
        if doc is None:
            return "_not run_"
        try:
            figure = str(render(doc))
        except (KeyError, TypeError, ValueError) as exc:
            return f"_unreadable ({exc})_"
        tier = self.data.get("tier")
        if section != "tier" and tier and doc.get("unix", 0) > tier["unix"]:
            figure += f" (rerun alone {_when(doc['unix'])}, after the last whole-tier run)"
        return figure


def _crash(d: dict[str, Any]) -> str:
    method = str(d.get("quantize", "none")).upper()
    kills = d.get("kills_by_stage") or {}
    per_stage = ", ".join(
        f"{stage} {kills[stage]}" + (f" ({method})" if stage == "calibrate" else "")
        for stage in STAGES
        if stage in kills
    )
    text = (
        f"{d['kills_survived']}/{d['kills']} kills survived at {d['distinct_points']} distinct points "
        f"({d['points_reached']} reached by one build; kills per stage: {per_stage or ', '.join(d['stages'])}); "
        f"{d['kills_leaving_staging']} left a half-built staging dir that gc removed"
    )
    if d.get("not_covered"):
        text += f"; not covered: {d['not_covered']}"
    return text


def _concurrency(d: dict[str, Any]) -> str:
    return (
        f"{d['builds']} simultaneous builds: {d['artifacts']} artifacts, {d['stage_runs']} stage runs "
        f"(once each), {d['cache_hits']} cache hits"
    )


def _hostile(d: dict[str, Any]) -> str:
    parts = ", ".join(f"{n} {kind}" for kind, n in d["rejected"].items())
    tracing = (
        "writes traced with strace"
        if d.get("write_tracing")
        else "strace not installed: writes not traced"
    )
    return f"{d['total']} inputs rejected ({parts}); {tracing}"


def _fuzz(d: dict[str, Any]) -> str:
    traced = f" ({d['cli_traced']} under strace)" if d.get("cli_traced") else ""
    return (
        f"{d['recipes']:,} generated recipes ({d['valid']:,} valid, {d['rejected']:,} rejected with a "
        f"located error), {d['cli_recipes']} of them also through `forge recipe check`{traced}; "
        "no write outside the recipe's folder"
    )


def _gguf_fuzz(d: dict[str, Any]) -> str:
    return (
        f"{d['cases']:,} fuzzed GGUF files ({d['read']:,} read, {d['refused']:,} refused with exit 5), "
        f"{d['cli']} of the refused also through `forge recipe check` under strace; no other exception"
    )


def _config_fuzz(d: dict[str, Any]) -> str:
    return (
        f"{d['cases']:,} fuzzed config.json files ({d['accepted']:,} accepted, {d['exit 2']:,} exit 2, "
        f"{d['exit 5']:,} exit 5), {d['cli']} of the refused also through `forge recipe check` "
        "under strace; no other exception"
    )


def _manifest_fuzz(d: dict[str, Any]) -> str:
    return (
        f"{d['cases']:,} fuzzed manifests ({d['valid']:,} read as valid, {d['damaged']:,} refused as "
        f"damage), {d['cli']} of the damaged also through `forge cache verify` (exit 6) under strace, "
        "every third rebuilt by `forge build`; no other exception, no hang"
    )


def _relocation(d: dict[str, Any]) -> str:
    return (
        f"a copy and a move of the reference store ({d['artifacts']} artifacts): gc (and its dry run) "
        f"deleted nothing, all {d['stages']} stages hits"
    )


def _disk(d: dict[str, Any]) -> str:
    tmpfs = ", ".join(d["tmpfs_stages"]) or "skipped (no user namespaces)"
    return f"RLIMIT_FSIZE in {', '.join(d['rlimit_stages'])}; real ENOSPC on tmpfs in {tmpfs}"


def _reproducible(d: dict[str, Any]) -> str:
    if not d["unstable"]:
        return f"all {d['artifacts']} artifacts bit-identical across two clean builds"
    return f"**{len(d['unstable'])} of {d['artifacts']} differ**: {', '.join(d['unstable'])}"


def _footprint(d: dict[str, Any]) -> str:
    left = d["writes_outside_forge_home"]
    leaves = [
        p for p in left if not any(o.startswith(p + "/") for o in left)
    ]  # files, not their dirs
    return (
        "nothing outside $FORGE_HOME"
        if not left
        else f"writes outside $FORGE_HOME: {', '.join(leaves[:4])}"
    )


def _secrets(d: dict[str, Any]) -> str:
    leaks = d["leaks"]
    scanned = f"{d['files_scanned']} files ({', '.join(d['areas'])}) and {d['outputs_scanned']} command outputs"
    return f"0 leaks in {scanned}" if not leaks else f"**leaks**: {', '.join(leaks)}"


def _tier(d: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{n} {k}" for k, n in d["outcomes"].items())
    cpu = f", {d['cpu_seconds'] // 60} min of CPU" if "cpu_seconds" in d else ""
    load = ""
    if d.get("load_mean") is not None:  # the machine may have been shared: wall time depends on it
        load = f" (load average {d['load_mean']} mean, {d['load_max']} peak, sampled every 30 s)"
    return f"{outcomes} in {d['seconds'] // 60} min {d['seconds'] % 60} s on {d['cpus']} CPUs{load}{cpu}"


def _verdict(tier: dict[str, Any], test: str) -> str:
    """How the row's test(s) ended in the last whole-tier run, when not a plain pass."""
    marks = []
    for outcome, label in (("failed", "FAILED"), ("xfailed", "known failure (xfail)")):
        hits = [n.split("::")[-1] for n in tier.get(outcome, []) if n.startswith(test)]
        if hits:
            marks.append(f"**{label}**: `{'`, `'.join(hits)}` · ")
    return "".join(marks)


def render(data: dict[str, dict[str, Any]]) -> str:
    f = Figures(data)
    tier = data.get("tier", {})
    ran = _when(tier["unix"]) if tier else "never"
    rows = [
        (
            "A killed build leaves nothing partial visible: every artifact dir has a manifest matching its "
            "files; `forge cache ls` agrees",
            f"{T}/test_crash.py::test_kill_at_every_point_leaves_a_consistent_store",
            f("crash", _crash),
        ),
        (
            "After a kill, rerunning gives the same keys and content digests as an uninterrupted build; "
            "`forge cache gc` removes the leftovers and nothing the build uses",
            f"{T}/test_crash.py::test_kill_at_every_point_leaves_a_consistent_store",
            "the same kills",
        ),
        (
            "Two clean builds of one recipe produce bit-identical artifacts",
            f"{T}/test_crash.py::test_uninterrupted_builds_are_bit_reproducible",
            f("reproducible", _reproducible),
        ),
        (
            "Concurrent builds of one recipe do each stage's work once and agree bit for bit",
            f"{T}/test_concurrency.py::test_concurrent_builds_of_one_recipe_do_each_stage_once",
            f("concurrency", _concurrency),
        ),
        (
            "Builds wait only on keys they share; a lock dies with its holder (SIGKILL); a lock wait "
            "times out with exit 6",
            f"{T}/test_concurrency.py",
            f("concurrency_locks", lambda d: "; ".join(d["proved"]) or "none proved"),
        ),
        (
            "A damaged artifact (flipped byte with mtime restored, truncation, deleted file or manifest, "
            "garbage manifest) is a miss: rejected, said so, rebuilt identical",
            f"{T}/test_integrity.py",
            f(
                "integrity_flip",
                lambda d: f"flipped a byte in {', '.join(d['stages'])}: {d['detected']} detected",
            ),
        ),
        (
            "`forge cache verify` finds damage anywhere in the store (exit 6); `--fix` removes it",
            f"{T}/test_integrity.py::test_cache_verify_finds_damage_everywhere_and_fix_removes_it",
            f(
                "integrity_verify",
                lambda d: (
                    f"{d['detected_by_verify']}/{d['damaged_artifacts']} damaged artifacts found"
                ),
            ),
        ),
        (
            "A full disk in any stage is exit 6 with 'out of disk space', no partial artifact, no staging "
            "dir; the next build succeeds",
            f"{T}/test_disk.py",
            f("disk", _disk),
        ),
        (
            "Any recipe is either valid or an error at file:line:col — exit 2, or exit 5 where a file "
            "it names is missing or not a regular file — never a traceback",
            f"{T}/test_recipe_fuzz.py",
            f("fuzz", _fuzz),
        ),
        (
            "Hostile inputs (lying safetensors headers, truncated files, absurd configs, pickle — "
            "refused without `allow_pickle`, and with it loaded weights-only, never running code — remote "
            "code, unloadable tokenizers, paths escaping the model folder, recipe paths naming a device, FIFO, "
            "directory or /proc file, recipe arguments that are devices or FIFOs, malformed GGUFs, models "
            "forge cannot convert, manifests naming a device, bad settings, YAML bombs and python tags) are "
            "refused with a clear error, files a recipe names (its model's tokenizer included) before any "
            "stage runs; nothing is written outside $FORGE_HOME and nothing partial inside it",
            f"{T}/test_hostile_inputs.py",
            f("hostile", _hostile),
        ),
        (
            "Any GGUF header (counts, lengths, types, tensor extents) is read or refused with exit 5 naming "
            "the file, bounded by the file's size — never another exception, a hang or an unbounded "
            "allocation",
            f"{T}/test_gguf_fuzz.py",
            f("gguf_fuzz", _gguf_fuzz),
        ),
        (
            "Any config.json (wrong types, out-of-range and contradictory sizes) is accepted or refused "
            "with exit 2 or 5 before any work — never another exception",
            f"{T}/test_config_fuzz.py",
            f("config_fuzz", _config_fuzz),
        ),
        (
            "Any manifest.json (wrong types, missing fields, roots and file names pointing at devices, "
            "/proc, FIFOs or out of their folder, garbage bytes) is read or refused as damage — exit 6 "
            "in `forge cache verify`, rebuilt by `forge build` — never another exception or a hang",
            f"{T}/test_manifest_fuzz.py",
            f("manifest_fuzz", _manifest_fuzz),
        ),
        (
            "A store copied or moved to another path keeps its artifacts: all cache hits, and `forge cache "
            "gc` (and its `--dry-run`, which reports the same) deletes nothing a recipe uses",
            f"{T}/test_relocation.py",
            f("relocation", _relocation),
        ),
        (
            "A build writes nothing outside $FORGE_HOME, not even an empty directory (onnxruntime's "
            "telemetry is switched off and torch's inductor cache is pointed into the store; see below)",
            f"{T}/test_footprint.py::test_full_build_writes_only_under_forge_home",
            f("footprint", _footprint),
        ),
        (
            "An HF token is never written to a manifest, key, ref, event, report or memo, nor printed",
            f"{T}/test_footprint.py::test_hf_token_is_never_written_or_printed",
            f("secrets", _secrets),
        ),
    ]
    table = "\n".join(
        f"| {i} | {what} | `{test}` | {_verdict(tier, test)}{fig} |"
        for i, (what, test, fig) in enumerate(rows, 1)
    )
    overhead = f("fault_overhead", lambda d: f"{d['ns_per_point_unset']:.0f} ns")
    commit = (
        f"{tier['commit']}{' + uncommitted changes' if tier.get('dirty') else ''}"
        if tier
        else _commit()
    )
    return TEMPLATE.format(
        ran=ran,
        commit=commit,
        python=platform.python_version(),
        machine=f"{platform.system()} {platform.machine()}",
        tier=f("tier", _tier),
        table=table,
        overhead=overhead,
    )


TEMPLATE = """# Reliability: what forge guarantees, and the test that proves each

Every guarantee below is checked by the reliability tier, which drives the real
`forge` CLI in subprocesses on a tiny real model — real SIGKILLs, real
concurrent processes, real full disks, no mocks. The figures are from its last
run, rendered by a script so anyone can refresh them:

```bash
make test-reliability                 # writes build/reliability/*.json (time: see "Last run")
python -m tests.reliability.report    # rewrites this page from those files
```

Last run: {ran} · commit `{commit}` · Python {python} · {machine} · {tier}.

| # | Guarantee | Proved by | Last run |
|---|---|---|---|
{table}

## How the crash tests kill forge

`trtllm_forge/faults.py` is part of the product: instrumented places call
`point(name)` — the start of each stage, after each tensor a streaming
safetensors writer writes, four places inside `Store.commit` (before/after the
manifest, before/after the rename that publishes an artifact), and around
writing the recipe's ref. With no environment variable set a point costs one
global check ({overhead} per call, last run).

The tier's reference recipe runs all five stages on a tiny Llama and quantizes
for real — AWQ through ModelOpt on 8 calibration sequences, group size 32 — so
calibrate streams a checkpoint of its own (packed INT4 weights, group scales, AWQ pre-quant
scales) through the instrumented writer, and build lowers it to an ONNX Q/DQ
engine that verify runs. Kills, full disks and flipped bytes reach that
checkpoint like any other.

| variable | effect |
|---|---|
| `FORGE_FAULT=<point>[:<n>]` | on the n-th time (default 1st) the process reaches `<point>`, it SIGKILLs itself: no `finally`, no `atexit`, no flush |
| `FORGE_FAULT_ACTION=stop` | SIGSTOP instead, so a test can hold a build (and its locks) at that point, then SIGCONT or SIGKILL it |
| `FORGE_FAULT_LIST=<file>` | append the name of every point reached, one per line: the harness kills at each in turn |

```bash
FORGE_FAULT_LIST=/tmp/points forge build recipes/tiny-llama.yaml   # which points exist
FORGE_FAULT=store.commit.convert.before_rename forge build recipes/tiny-llama.yaml; echo $?  # 137
forge cache ls; forge cache gc; forge build recipes/tiny-llama.yaml   # consistent, cleaned, finished
```

## The event log

`$FORGE_HOME/log/events.jsonl` gets one JSON line per stage event — `start`,
`commit`, `hit`, `wait` (for another build's lock), `rejected` (a damaged
entry, with the reason), `failed` — with the time, pid, stage and key. Each line
is one `write()` on an `O_APPEND` descriptor, so concurrent builds never
interleave; logging never fails a build. It is how the concurrency tests count
that each stage ran once.

## Writes by libraries forge uses

onnxruntime 1.31 on Linux starts Microsoft's 1DS telemetry when its native library
loads (`core/platform/posix/telemetry_1ds.cc`, `device_id.cc` in its source): it
creates `~/.cache/Microsoft/DeveloperTools/.onnxruntime/` holding a device id
(`deviceid`) and an offline event queue (`onnxruntime.db`). It stays quiet when it
sees a CI runner (`CI`, `GITHUB_ACTIONS`, ...), which is why the tier removes those
variables from its subprocesses. forge imports onnxruntime in one place
(`trtllm_forge/engine/runtime.py`, `_import_onnxruntime`) and sets
`ORT_DISABLE_TELEMETRY=1` first, unless the variable is already set: `0` is a user's
explicit opt-in. The variable is read once, when the library loads, so a program
that imported onnxruntime before calling forge's Python API keeps its own choice.
`test_onnxruntime_telemetry_is_off_unless_the_user_opts_in` traces both cases.

Importing torch's inductor (transformers and ModelOpt do) creates an empty
`$TMPDIR/torchinductor_<user>` in every process. The `forge` command sets
`TORCHINDUCTOR_CACHE_DIR=$FORGE_HOME/torchinductor` before anything imports torch,
unless the variable is already set; forge compiles nothing, so the directory stays
empty. The footprint test counts anything left in TMPDIR, empty directories too.

## What the tier does not cover

- Power loss: the store fsyncs files before publishing them, but a SIGKILL
  leaves the page cache intact, so lost writes after a kernel crash are not
  simulated.
- Network file systems (flock semantics on NFS) and the future remote cache.
- Stages that do not build yet on the tiny model are listed in row 1 ("not covered").
"""


_ROW = re.compile(r"^\| (\d+) \| (.*) \| `([^`]+)` \| (.*) \|$")


def splice(old: str, new: str, tests: list[str]) -> str:
    """``new`` where only the rows proved by ``tests`` (file names) take its figures: the
    other rows keep ``old``'s, and the page keeps ``old``'s "Last run" line, since a
    partial run (one test file) says nothing about the rest of the tier. The rows it
    does change say when they were rerun (Figures)."""
    old_rows: dict[str, list[str]] = {}  # two rows may name one test: kept in order
    for match in filter(None, map(_ROW.match, old.splitlines())):
        old_rows.setdefault(match[3], []).append(match[4])
    out = []
    for line in new.splitlines():
        match = _ROW.match(line)
        if line.startswith("Last run: "):
            line = next((x for x in old.splitlines() if x.startswith("Last run: ")), line)
        elif match:
            number, what, test, figure = match.groups()
            if Path(test.split("::")[0]).name not in tests and old_rows.get(test):
                figure = old_rows[test].pop(0)
            line = f"| {number} | {what} | `{test}` | {figure} |"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--rows test_a.py,test_b.py``: rerender only those files' rows (from a partial run)."""
    args = sys.argv[1:] if argv is None else argv
    data = load(RESULTS)
    if not data:
        print(f"no results in {RESULTS}; run `make test-reliability` first", file=sys.stderr)
        return 1
    page = render(data)
    if args[:1] == ["--rows"] and len(args) == 2:
        page = splice(DOC.read_text(), page, args[1].split(","))
    elif args:
        print("usage: python -m tests.reliability.report [--rows test_x.py,...]", file=sys.stderr)
        return 2
    DOC.write_text(page)
    print(f"wrote {DOC.relative_to(ROOT)} from {len(data)} result file(s) in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
