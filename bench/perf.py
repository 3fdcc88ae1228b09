"""The performance benchmark: ``python -m bench [--quick] [--out docs/performance.md]``.

Builds a synthetic checkpoint of a real model shape, then measures, each in its
own process: the first ``forge build`` up to convert, sharding to TP=2, ``cp``
of the same bytes (the yardstick), a no-op rebuild, ``forge plan``,
``forge --help`` and digest throughput. Results go into a Markdown section of
``--out`` (between the bench markers, so hand-written text around it stays)
and the raw numbers into ``bench/.data/results-<shape>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import measure, report
from bench.lib import DATA, DOCS, RESULTS, ROOT
from bench.synth import SHAPES, Shape, ensure_checkpoint

TP = 2
REPEATS = 5


class Bench:
    def __init__(self, shape: Shape, data: Path, *, log: Any = print) -> None:
        self.shape = shape
        self.data = data
        self.src = data / f"hf-{shape.name}"
        self.run_dir = data / f"run-{shape.name}"
        self.home = self.run_dir / "home"
        self.recipe = self.run_dir / "recipe.yaml"
        self.log = log
        self.env = {**os.environ, "FORGE_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        self.forge = _forge_command()
        self.results: dict[str, Any] = {"shape": self.shape.name, "tp": TP}

    # -- steps -----------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        self.results["machine"] = measure.machine()
        self.results["commands"] = {}
        self._synth()
        self._fresh_run_dir()
        self._cp("cp_source", [self.src], "source")
        self._forge_build("fetch", evict=[self.src])
        converted = self._forge_build("convert", evict=[self.src])
        self._cp("cp_converted", [converted], "converted")
        self._shard(converted)
        self._noop()
        self._digest()
        return self.results

    def _synth(self) -> None:
        t0 = time.perf_counter()
        self.log(
            f"synthetic {self.shape.name} checkpoint ({self.shape.nbytes / 1e9:.2f} GB) in {self.src}"
        )
        written = ensure_checkpoint(self.src, self.shape)
        self.results["synth"] = {
            "written_now": written,
            "seconds": time.perf_counter() - t0,
            "bytes": measure.tree_bytes([self.src]),
            "files": sorted(p.name for p in self.src.iterdir()),
        }

    def _fresh_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self.recipe.write_text(report.recipe_text(self.shape.name, self.src, TP))

    def _cp(self, label: str, sources: list[Path], what: str) -> None:
        """The yardstick: copy the same files with cp, then fsync them (forge's commit fsyncs too)."""
        dest = self.run_dir / f"{label}.tmp"
        dest.mkdir()
        files = [p for s in sources for p in sorted(s.iterdir()) if p.is_file()]
        measure.evict(files)
        cp = measure.run(["cp", "--", *map(str, files), str(dest)])
        copies = [dest / f.name for f in files]
        sync = measure.run(["sync", "--", *map(str, copies)])
        self.results[label] = {
            "cp_s": cp.seconds,
            "sync_s": sync.seconds,
            "total_s": cp.seconds + sync.seconds,
            "bytes": measure.tree_bytes(files),
            "what": what,
        }
        self.results["commands"][label] = f"{cp.command} && {sync.command}"
        self.log(f"{label}: cp {cp.seconds:.1f}s + sync {sync.seconds:.1f}s")
        shutil.rmtree(dest)

    def _forge_build(self, until: str, *, evict: list[Path]) -> Path:
        measure.evict(evict)
        argv = [*self.forge, "build", str(self.recipe), "--until", until, "--json"]
        result = measure.run(argv, env=self.env, cwd=ROOT)
        stages = json.loads(result.stdout)["stages"]
        self.results[f"build_{until}"] = _process_figures(result) | {"stages": stages}
        self.results["commands"][f"build_{until}"] = result.command
        self.log(
            f"forge build --until {until}: {result.seconds:.1f}s, max RSS {result.max_rss_bytes / 1e9:.2f} GB"
        )
        return Path(stages[-1]["path"])

    def _shard(self, converted: Path) -> None:
        measure.evict([converted])
        argv = [
            sys.executable,
            "-m",
            "bench.steps",
            "shard",
            "--home",
            str(self.home),
            "--src",
            str(converted),
            "--tp",
            str(TP),
        ]
        result = measure.run(argv, env=self.env, cwd=ROOT)
        self.results["shard"] = _process_figures(result) | json.loads(result.stdout)
        self.results["commands"]["shard"] = result.command
        self.log(
            f"shard tp={TP}: {result.seconds:.1f}s, max RSS {result.max_rss_bytes / 1e9:.2f} GB"
        )

    def _noop(self) -> None:
        _byte_compile()
        until = "calibrate"  # the last stage this benchmark builds (build needs a 7B ONNX lowering)
        build = [*self.forge, "build", str(self.recipe), "--until", until, "--json"]
        measure.run(build, env=self.env, cwd=ROOT)  # makes the pass-through calibrate entry
        runs = {
            "python_pass": [sys.executable, "-c", "pass"],
            "noop_build": build,
            # plan stops where the build stops: its pre-flight estimate then covers only
            # cached stages, so a machine short of disk or memory for the build and
            # verify stages this benchmark never runs still times it
            "plan": [*self.forge, "plan", str(self.recipe), "--until", until, "--json"],
            "help": [*self.forge, "--help"],
        }
        for label, argv in runs.items():
            self._repeat_row(label, argv, self.env)
        self.results["noop_build"]["statuses"] = _statuses(build, self.env)
        self._noop_all_stages()

    def _noop_all_stages(self) -> None:
        """No-op of all five stages, on the tiny recipe: building and verifying the 7B
        shape through ONNX Runtime on this CPU machine is not feasible (the engine alone
        would be another 13.5 GB, and verify runs the model), so the 7B no-op stops at
        calibrate; this row shows what the build and verify hits add."""
        measure.run([sys.executable, str(ROOT / "recipes" / "tiny" / "make_models.py")], cwd=ROOT)
        env = {**self.env, "FORGE_HOME": str(self.run_dir / "tiny-home")}
        build = [*self.forge, "build", str(ROOT / "recipes" / "tiny-llama.yaml"), "--json"]
        measure.run(build, env=env, cwd=ROOT)  # builds the five artifacts
        self._repeat_row("noop_build_all", build, env)
        self.results["noop_build_all"]["statuses"] = _statuses(build, env)

    def run_noop(self) -> dict[str, Any]:
        """Only the start-up rows, on the tiny recipe (seconds, not the 7B build's minutes)."""
        self.results = {"shape": "tiny-llama", "machine": measure.machine(), "commands": {}}
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        _byte_compile()
        self._noop_all_stages()
        env = {**self.env, "FORGE_HOME": str(self.run_dir / "tiny-home")}
        recipe = str(ROOT / "recipes" / "tiny-llama.yaml")
        self._repeat_row("python_pass", [sys.executable, "-c", "pass"], env)
        self._repeat_row("plan", [*self.forge, "plan", recipe, "--json"], env)
        self._repeat_row("help", [*self.forge, "--help"], env)
        return self.results

    def _repeat_row(self, label: str, argv: list[str], env: dict[str, str]) -> None:
        rep = measure.repeat(argv, REPEATS, env=env, cwd=ROOT)
        self.results[label] = {
            "best_s": rep.best,
            "median_s": rep.median,
            "all_s": rep.seconds,
            "cpu_median_s": statistics.median(rep.cpu_seconds),
        }
        self.results["commands"][label] = rep.command
        self.log(f"{label}: best {rep.best * 1000:.0f} ms, median {rep.median * 1000:.0f} ms")

    def _digest(self) -> None:
        files = sorted(p for p in self.src.iterdir() if p.is_file() and p.name != "synth.json")
        argv = [
            sys.executable,
            "-m",
            "bench.steps",
            "digest",
            *map(str, files),
            "--memo",
            str(self.run_dir / "digest-memo.sqlite"),
        ]
        result = measure.run(argv, env=self.env, cwd=ROOT)
        self.results["digest"] = json.loads(result.stdout)
        self.results["commands"]["digest"] = result.command
        d = self.results["digest"]
        self.log(
            f"digest: miss/cold {d['bytes'] / d['miss_cold_cache']['seconds'] / 1e9:.2f} GB/s, "
            f"miss/warm {d['bytes'] / d['miss_warm_cache']['seconds'] / 1e9:.2f} GB/s, "
            f"hit {d['hit']['seconds'] * 1000:.1f} ms"
        )


def _byte_compile() -> None:
    """Bring forge's bytecode up to date, as `make venv` and any pip install do: a source
    edited since (or a checkout newer than the venv) would otherwise be recompiled on every
    start where PYTHONDONTWRITEBYTECODE is set, and the rows would time the compiler."""
    plugins = sorted(p for p in ROOT.glob("plugins/*/trtllm_forge_*") if p.is_dir())
    sources = [str(ROOT / "trtllm_forge"), *map(str, plugins)]
    measure.run([sys.executable, "-m", "compileall", "-q", *sources], cwd=ROOT)


def _statuses(build: list[str], env: dict[str, str]) -> list[str]:
    """Each stage's status in one more run of ``build`` (all ``hit`` for a no-op)."""
    stages = json.loads(measure.run(build, env=env, cwd=ROOT).stdout)["stages"]
    return [s["status"] for s in stages]


def _process_figures(result: measure.Run) -> dict[str, Any]:
    return {
        "seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "max_rss_bytes": result.max_rss_bytes,
        "peak_anon_bytes": result.peak_anon_bytes,
    }


def _forge_command() -> list[str]:
    script = Path(sys.executable).parent / "forge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trtllm_forge"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1B shape (CI smoke test) instead of 7B"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown file to write (default: docs/performance.md; "
        "bench/.data/performance-quick.md with --quick)",
    )
    parser.add_argument("--data", type=Path, default=DATA, help="where checkpoints and stores go")
    parser.add_argument(
        "--keep", action="store_true", help="keep the converted and sharded checkpoints"
    )
    parser.add_argument(
        "--label", default="", help="suffix of the raw results file (e.g. 'before')"
    )
    parser.add_argument(
        "--noop",
        action="store_true",
        help="only the start-up rows (no-op builds, plan, --help) on the tiny recipe; "
        "writes bench/results/noop.json and its section of docs/performance.md",
    )
    args = parser.parse_args(argv)
    if args.noop:
        return _main_noop(args.data)
    shape = SHAPES["llama-1b" if args.quick else "llama-7b"]
    out = args.out or (
        args.data / "performance-quick.md" if args.quick else DOCS / "performance.md"
    )
    bench = Bench(shape, args.data)
    started = time.time()
    try:
        results = bench.run_all()
    finally:
        if not args.keep:
            shutil.rmtree(bench.run_dir, ignore_errors=True)
    results["started_unix"] = started
    results["duration_s"] = time.time() - started
    results["invocation"] = "python -m bench" + (" --quick" if args.quick else "")
    raw = args.data / f"results-{shape.name}{'-' + args.label if args.label else ''}.json"
    raw.write_text(json.dumps(results, indent=2) + "\n")
    report.write(out, results)
    print(f"wrote {out} and {raw} in {results['duration_s']:.0f}s")
    return 0


def _main_noop(data: Path) -> int:
    bench = Bench(SHAPES["llama-1b"], data)  # the shape is unused: the tiny recipe is built
    bench.run_dir = data / "run-noop"
    started = time.time()
    try:
        results = bench.run_noop()
    finally:
        shutil.rmtree(bench.run_dir, ignore_errors=True)
    results["started_unix"] = started
    results["invocation"] = "python -m bench --noop"
    raw = RESULTS / "noop.json"
    raw.write_text(json.dumps(results, indent=2) + "\n")
    report.write_noop(DOCS / "performance.md", results)
    print(f"wrote docs/performance.md (no-op section) and {raw}")
    return 0
