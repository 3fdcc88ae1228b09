"""The GPU half of docs/engine-performance.md, run on the GPU machine (an H200).

    python3 -m bench.engine_perf_gpu --gguf FILE --out DIR [--models smollm2-135m,llama-1b]
    python -m bench.engine_perf_gpu collect OUT/engine_perf_gpu.json [...] --note TEXT   # here

The models are made there, since nothing bigger than 64 MiB reaches that machine per call:

* ``smollm2-135m``: SmolLM2-135M from its Q4_1 GGUF (the file ``python -m bench.data``
  fetches), dequantized to an HF folder by forge's own GGUF fetch — the same weights as
  the CPU table;
* ``llama-1b``: bench/synth.py's TinyLlama-1.1B shape with seeded random weights, its
  vocabulary widened to SmolLM2's 49,152 so that SmolLM2's tokenizer (copied in) serves
  it: the builder needs a tokenizer, and timing does not depend on the weights' values.

Each model, at float16 and int4, through the real CLI (``forge build --until build``,
``forge bench``), every target timed in its own process (batch 1 and 8, 64-token prompts,
128 new tokens, greedy), all on the GPU:

* forge's ``ort`` profile, ``compute_dtype: float16`` (int4: weight-only RTN, the groups
  of the CPU table, lm_head quantized as the builder does), with ``--device cuda``;
* forge's ``portable`` profile (float32; SmolLM2 only), the graph before this profile;
* onnxruntime-genai's model builder, ``-e cuda``, fp16 and int4 (same block size),
  run by onnxruntime-genai-cuda;
* transformers, float16 on torch's CUDA device.

forge's ort engines replay their decode steps as CUDA graphs by default
(engine/graph_step.py); the builder's folders leave them off unless their config says
otherwise. Both are also timed the other way (``, no CUDA graph`` / ``, CUDA graph``
targets: ``forge bench --no-cuda-graph`` / ``--cuda-graph``), so the table shows what
the graphs are worth on each side and forge against the builder at its best.

It needs onnxruntime-gpu, onnxruntime-genai-cuda and the CUDA 13 / cuDNN 9 libraries on
LD_LIBRARY_PATH (the GPU machine's torch carries them). Every report lands in
``--out/engine_perf_gpu.json`` after each run, so a run stopped at its time limit keeps
what it measured; ``python -m bench.engine_perf --render-only`` renders the section.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from bench import lib

PYTHON = sys.executable
SEED = 0
LIMITS = {"max_batch_size": 8, "max_input_len": 64, "max_seq_len": 256}
SMOLLM2_VOCAB = 49152
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Model:
    name: str
    group_size: int  # forge's int4 groups and the builder's block_size
    portable: bool  # also time the portable float32 graph


MODELS = {
    # SmolLM2-135M's 576-wide inputs hold no whole 128-groups
    "smollm2-135m": Model("smollm2-135m", 64, True),
    "llama-1b": Model("llama-1b", 128, False),
}


def smollm2_folder(gguf: Path, work: Path, log: Any) -> Path:
    from trtllm_forge.sources import gguf_to_hf

    hf = work / "hf-smollm2-135m"
    if not (hf / "config.json").is_file():
        log(f"gguf -> {hf}")
        gguf_to_hf(gguf, hf, dtype="float32")
    return hf


def llama_1b_folder(tokenizer_from: Path, work: Path, log: Any) -> Path:
    from bench.synth import SHAPES, ensure_checkpoint

    hf = work / "hf-llama-1b"
    shape = replace(SHAPES["llama-1b"], vocab_size=SMOLLM2_VOCAB)
    log(f"synthesizing {hf}")
    ensure_checkpoint(hf, shape, seed=SEED)
    source = json.loads((tokenizer_from / "config.json").read_text())
    config = json.loads((hf / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in source:
            config[key] = source[key]
    (hf / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copyfile(tokenizer_from / name, hf / name)
    return hf


def env(work: Path) -> dict[str, str]:
    return {**os.environ, "FORGE_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}


def forge_engine(
    hf: Path, model: Model, precision: str, profile: str, work: Path, log: Any
) -> Path:
    """``forge build --until build`` of one recipe; the engine directory."""
    quantize: dict[str, Any] = {"method": "none"}
    build: dict[str, Any] = {"profile": profile, **LIMITS}
    if profile == "ort":
        build["compute_dtype"] = "float16"
    if precision == "int4":
        quantize = {"method": "int4_wo", "group_size": model.group_size, "quantize_lm_head": True}
    recipe = work / "recipes" / f"{model.name}-{precision}-{profile}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema_version": 1,
        "name": recipe.stem,
        "source": {"path": str(hf)},
        "convert": {"dtype": "float16" if profile == "ort" else "float32"},
        "quantize": quantize,
        "build": build,
        "verify": {"enabled": False},
    }
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    log(f"forge build {recipe.name}")
    command = [PYTHON, "-m", "trtllm_forge", "build", str(recipe), "--until", "build", "--json"]
    run = subprocess.run(command, capture_output=True, text=True, env=env(work))
    if run.returncode:
        raise RuntimeError(f"forge build {recipe.name}: {(run.stderr or run.stdout)[-1500:]}")
    stages = {s["stage"]: s for s in json.loads(run.stdout)["stages"]}
    return Path(stages["build"]["path"]) / "engine"


def builder_model(hf: Path, model: Model, precision: str, run_: Run, log: Any) -> Path:
    work = run_.work
    target = work / "genai" / f"{model.name}-{precision}"
    if (target / "genai_config.json").is_file():
        return target
    command = [
        PYTHON, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(target),
        "-p", precision, "-e", run_.device, "-c", str(work / "builder-cache"),
    ]  # fmt: skip
    if precision == "int4":
        command += ["--extra_options", f"block_size={model.group_size}"]
    log(" ".join(command[2:]))
    run = subprocess.run(command, capture_output=True, text=True, env=env(work))
    if run.returncode:
        raise RuntimeError(f"builder {precision}: {(run.stderr or run.stdout)[-1500:]}")
    return target


@dataclass(frozen=True)
class Run:
    """Where and how long: the GPU by default; ``--device cpu`` smoke-tests the script."""

    device: str
    output_len: int
    work: Path


GRAPH_FLAGS = {"": [], ", no CUDA graph": ["--no-cuda-graph"], ", CUDA graph": ["--cuda-graph"]}


def bench(
    runtime: str, target: Path, tokenizer: Path, run_: Run, log: Any, variant: str = ""
) -> dict[str, Any]:
    work = run_.work
    tag = "-graph-off" if variant == ", no CUDA graph" else "-graph-on" if variant else ""
    report = work / "reports" / f"{runtime}-{target.parent.name}-{target.name}{tag}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    command = [
        PYTHON, "-m", "trtllm_forge", "bench", str(target), "--runtime", runtime,
        "--device", run_.device, "--batch-sizes", "1,8", "--input-len", "64",
        "--output-len", str(run_.output_len),
        "--batches", "2", "--warmup", "1", "--tokenizer", str(tokenizer), "--out", str(report),
        "-q",
    ]  # fmt: skip
    if runtime == "transformers":
        command += ["--dtype", "float16"]
    command += GRAPH_FLAGS[variant]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=env(work))
    log(
        f"bench {runtime} {target.name}{variant}: rc {run.returncode}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    if not report.is_file():
        return {"error": (run.stderr or run.stdout)[-2000:] or f"exit {run.returncode}"}
    result: dict[str, Any] = json.loads(report.read_text())
    if run.returncode:  # the report was complete; the process failed after writing it
        result["exit_code"] = run.returncode
        result["stderr_tail"] = run.stderr[-500:]
    return result


def targets(model: Model, hf: Path, run_: Run, log: Any):  # type: ignore[no-untyped-def]
    work = run_.work
    """(label, precision, runtime, how to make the target, graph variant) in the order they
    are timed (a target made once is reused by its other variant)."""
    jobs = []
    for precision in ("fp16", "int4"):
        forge_precision = "float16" if precision == "fp16" else "int4"
        for variant in ("", ", no CUDA graph"):
            jobs.append(
                (f"forge ort {precision}{variant}", precision, "forge",
                 lambda p=forge_precision: forge_engine(hf, model, p, "ort", work, log), variant)
            )  # fmt: skip
        for variant in ("", ", CUDA graph"):
            jobs.append(
                (f"genai builder {precision}{variant}", precision, "genai",
                 lambda p=precision: builder_model(hf, model, p, run_, log), variant)
            )  # fmt: skip
    if model.portable:
        jobs.append(
            ("forge portable fp32", "fp32", "forge",
             lambda: forge_engine(hf, model, "float32", "portable", work, log), "")
        )  # fmt: skip
    jobs.append(("transformers fp16", "fp16", "transformers", lambda: hf, ""))
    return jobs


def header() -> dict[str, Any]:
    import onnxruntime as ort

    smi = shutil.which("nvidia-smi")
    query = [smi or "true", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    gpu = subprocess.run(query, capture_output=True, text=True).stdout.strip() or "no GPU"
    return {
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "gpu": gpu,
        "command": "python3 -m bench.engine_perf_gpu " + " ".join(sys.argv[1:]),
        "workload": "greedy, 64-token prompts, 128 new tokens, batch 1 and 8, 2 timed batches",
        "models": {
            "smollm2-135m": "SmolLM2-135M-Instruct, its Q4_1 GGUF dequantized by forge",
            "llama-1b": "TinyLlama-1.1B shape, vocabulary 49,152, seeded random weights",
        },
        "runs": [],
    }


# -- here: the results file and the doc section -------------------------------------------

RESULTS = lib.RESULTS / "engine_perf_gpu.json"
ORDER = (
    "forge ort fp16", "forge ort fp16, no CUDA graph", "genai builder fp16",
    "genai builder fp16, CUDA graph", "forge ort int4", "forge ort int4, no CUDA graph",
    "genai builder int4", "genai builder int4, CUDA graph", "forge portable fp32",
    "transformers fp16",
)  # fmt: skip
GRAPHED_PEER = ", CUDA graph"


def collect(paths: list[Path], reports: Path | None, note: str) -> dict[str, Any]:
    """One session from the run files the GPU machine returned (same header, runs joined).

    ``reports``: the run's report folder; a run recorded as failed whose report there is
    complete gets it back, with the failure kept (the first H200 run's processes aborted at
    exit after writing their reports)."""
    docs = [json.loads(p.read_text()) for p in paths]
    session = {**docs[0], "runs": [r for d in docs for r in d["runs"]], "note": note}
    for run in session["runs"]:
        error = run["report"].get("error")
        found = _report_file(reports, run) if error and reports else None
        if found is not None:
            run["report"] = {**json.loads(found.read_text()), "exit_error": error[-300:]}
    return session


def _report_file(reports: Path | None, run: dict[str, Any]) -> Path | None:
    runtime = "transformers" if run["target"].startswith("transformers") else "genai"
    if reports is None or run["target"].startswith("forge"):
        return None
    model = run["model"]
    name = (
        f"genai-genai-{model}-{run['precision']}.json"
        if runtime == "genai"
        else f"transformers-engine-perf-gpu-hf-{model}.json"
    )
    return reports / name if (reports / name).is_file() else None


def _scenario(report: dict[str, Any], batch: int) -> dict[str, Any] | None:
    for s in report.get("scenarios", []):
        if s["batch_size"] == batch:
            return dict(s)
    return None


def session_lines(session: dict[str, Any]) -> list[str]:
    lines = [
        f"**{session['started_at']}**, {session['gpu']}, onnxruntime-gpu "
        f"{session['onnxruntime']}, `{session['command']}`. {session.get('note', '')}",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in session["runs"]):
        runs = {r["target"]: r["report"] for r in session["runs"] if r["model"] == model}
        lines += [f"#### {model}: {session['models'][model]}", ""]
        lines += [
            "| engine | batch | tokens/s | TTFT p50 ms | TPOT p50 ms | e2e p99 ms "
            "| peak device MiB | vs builder, same precision | vs builder with CUDA graph |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for batch in (1, 8):
            for target in (t for t in ORDER if t in runs):
                lines.append(_row(target, batch, runs))
        lines.append("")
    return lines


def _row(target: str, batch: int, runs: dict[str, dict[str, Any]]) -> str:
    s = _scenario(runs[target], batch)
    if s is None:
        return f"| {target} | {batch} | — | — | — | — | — | {_failure(runs[target])} | |"
    precision = target.split(",")[0].rsplit(" ", 1)[1]
    ratios = [
        _ratio(s, _scenario(runs.get(f"genai builder {precision}{peer}", {}), batch))
        if not target.startswith("genai")
        else ""
        for peer in ("", GRAPHED_PEER)
    ]
    device = s.get("peak_device_bytes")
    return (
        f"| {target} | {batch} | {s['output_tokens_per_s']:.0f} | {s['ttft_ms']['p50']:.1f} | "
        f"{s['tpot_ms']['p50']:.2f} | {s['e2e_ms']['p99']:.0f} | "
        f"{'—' if device is None else f'{device / 2**20:.0f}'} | {ratios[0]} | {ratios[1]} |"
    )


def _failure(report: dict[str, Any]) -> str:
    """The line of a failed run's error that says what failed (not forge's hint after it)."""
    text = re.sub(r"\x1b\[[0-9;]*m|\[m", "", report.get("error", "not measured"))
    if "Status Message:" in text:
        return "failed: " + text.split("Status Message:", 1)[1].splitlines()[0].strip()[:90]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return ((errors or lines or ["failed"])[0])[:90]


def goal_lines(session: dict[str, Any]) -> list[str]:
    """Issue 20's GPU goal over one session: forge ort (its default, CUDA graphs on) against
    the builder as written, every precision and batch size measured."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in session["runs"]):
        runs = {r["target"]: r["report"] for r in session["runs"] if r["model"] == model}
        for precision in ("fp16", "int4"):
            for batch in (1, 8):
                mine = _scenario(runs.get(f"forge ort {precision}", {}), batch)
                peer = _scenario(runs.get(f"genai builder {precision}", {}), batch)
                if mine and peer:
                    ratio = mine["output_tokens_per_s"] / peer["output_tokens_per_s"]
                    lines.append(f"{model} {precision} b{batch} {ratio:.2f}×")
    return lines


def _ratio(mine: dict[str, Any], peer: dict[str, Any] | None) -> str:
    return f"{mine['output_tokens_per_s'] / peer['output_tokens_per_s']:.2f}×" if peer else ""


def render_section() -> list[str]:
    """docs/engine-performance.md's GPU section, newest session first."""
    lines = ["## GPU (H200)", ""]
    if not RESULTS.is_file():
        return [*lines, "Not measured yet: `python3 -m bench.engine_perf_gpu` on the GPU.", ""]
    doc = json.loads(RESULTS.read_text())
    lines += [
        "Each session: one `python3 -m bench.engine_perf_gpu` run on the GPU machine (see its "
        "docstring for how the packages and the model travel there), every target its own "
        "`forge bench --device cuda` process; greedy, 64-token prompts, 128 new tokens, 2 "
        "timed batches after 1 warm-up. Peak device memory is the driver's count of memory "
        "in use, less what was in use before the model loaded (trtllm_forge/bench/memory.py). "
        "Ratios only against the builder timed in the same session.",
        "",
    ]
    newest = goal_lines(doc["sessions"][-1]) if doc["sessions"] else []
    if newest:
        met = sum(float(line.rsplit(" ", 1)[1].rstrip("×")) >= 1.0 for line in newest)
        lines += [
            f"Goal (issue 20, GPU): forge's ort engine ≥ 1.0× the builder's tokens/s at equal "
            f"precision in every cell. Newest session: {met} of {len(newest)} cells met — "
            + "; ".join(newest)
            + ".",
            "",
        ]
    for session in reversed(doc["sessions"]):
        lines += session_lines(session)
    return lines


def _collect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_perf_gpu collect")
    parser.add_argument("runs", type=Path, nargs="+", help="engine_perf_gpu.json files")
    parser.add_argument("--reports", type=Path, help="the run's report folder, if returned")
    parser.add_argument("--note", default="", help="what this session is (shown above it)")
    args = parser.parse_args(argv)
    doc = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"sessions": []}
    doc["sessions"].append(collect(args.runs, args.reports, args.note))
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["collect"]:
        return _collect_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python3 -m bench.engine_perf_gpu")
    parser.add_argument("--gguf", type=Path, required=True, help="SmolLM2-135M's Q4_1 GGUF")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="smollm2-135m,llama-1b")
    parser.add_argument("--work", type=Path, default=Path("/tmp/engine-perf-gpu"))
    parser.add_argument("--deadline-s", type=float, default=540, help="start nothing after")
    parser.add_argument("--device", default="cuda", help="cpu: a quick check of this script")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--only", default="", help="comma list of target-label prefixes to run (e.g. 'forge ort')"
    )
    args = parser.parse_args(argv)
    run_ = Run(args.device, args.output_len, args.work)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.out / "engine_perf_gpu.json"
    doc = json.loads(results.read_text()) if results.is_file() else header()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f} s] {message}", flush=True)

    smollm2 = smollm2_folder(args.gguf, args.work, log)
    for name in args.models.split(","):
        model = MODELS[name]
        hf = smollm2 if name == "smollm2-135m" else llama_1b_folder(smollm2, args.work, log)
        for label, precision, runtime, make, variant in targets(model, hf, run_, log):
            if args.only and not label.startswith(tuple(args.only.split(","))):
                continue
            if time.perf_counter() - start > args.deadline_s:
                log(f"deadline: {name} {label} not run")
                continue
            entry = {"model": name, "target": label, "precision": precision}
            try:
                entry["report"] = bench(runtime, make(), smollm2, run_, log, variant)
            except Exception as exc:  # recorded in the results, the next target still runs
                log(f"{label} failed: {exc}")
                entry["report"] = {"error": str(exc)[-2000:]}
            doc["runs"].append(entry)
            results.write_text(json.dumps(doc, indent=1) + "\n")
    doc["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results.write_text(json.dumps(doc, indent=1) + "\n")
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
