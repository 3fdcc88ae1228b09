"""Engine speed against the peers: ``python -m bench.engine_perf`` → docs/engine-performance.md.

For each model (SmolLM2-135M from ``python -m bench.data --hf-dir``; ``llama-1b``, the
synthetic TinyLlama-1.1B shape of bench/synth.py with SmolLM2's vocabulary and tokenizer,
made by ``bench.engine_perf_gpu.llama_1b_folder`` as on the GPU) and precision (float32, int8
weight-only, int4), it builds forge engines in both lowering profiles through the real
CLI (``forge build --until build``, cached under bench/.data/engine-perf/home), has
onnxruntime-genai's model builder convert the same HF folder (in the separate venv
named by ``--builder-python``: the builder needs onnx-ir and onnxscript, which the
project venv does not carry), and times every target with ``forge bench`` (the bench
library: one timing loop for forge, genai and transformers), each in its own process,
one after the other. Greedy decoding, 64-token prompts, batch 1 and 8.

Results: bench/results/engine_perf.json (every report) and docs/engine-performance.md
(the table, rendered from the JSON: ``--render-only`` redoes just that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import lib, measure
from bench.engine_accuracy import head_accuracy, merge, render_accuracy, render_later
from bench.engine_goals import render_goals, scenario
from bench.engine_perf_gpu import llama_1b_folder

DATA = lib.DATA
WORK = DATA / "engine-perf"
RESULTS = lib.RESULTS / "engine_perf.json"
PARTIAL = WORK / "engine_perf.partial.json"
DOC = lib.DOCS / "engine-performance.md"
PYTHON = sys.executable
THREADS = 2
LIMITS = {"max_batch_size": 8, "max_input_len": 64, "max_seq_len": 256}


@dataclass(frozen=True)
class Model:
    name: str
    hf_dir: Path
    int4: dict[str, Any]  # forge's int4 quantize section
    int4_label: str
    output_len: int
    batches: int  # timed batches per scenario


def models(quick: bool) -> dict[str, Model]:
    return {
        "smollm2-135m": Model(
            "smollm2-135m",
            DATA / "smollm2-135m",
            # g64: SmolLM2's 576-wide inputs hold no whole 128-groups; 8 calibration windows
            # of 256 tokens, as docs/quantization.md's AWQ rows (the default 64 take 8x longer)
            {"method": "awq", "group_size": 64, "calibration": {"samples": 8}},
            "int4 AWQ g64",
            32 if quick else 128,
            1 if quick else 2,
        ),
        "llama-1b": Model(
            "llama-1b",
            DATA / "hf-llama-1b",
            # Random weights: AWQ's search means nothing there, and its kernels are
            # int4_wo's (the pre-quant scale is folded into the norms).
            {"method": "int4_wo", "group_size": 128},
            "int4 RTN g128",
            16 if quick else 32,
            1,
        ),
    }


PRECISIONS = ("float32", "int8", "int4")


def _quantize(model: Model, precision: str, head: bool) -> dict[str, Any]:
    """``head``: quantize lm_head too (quantize_lm_head, ort profile only), as the builder
    does at int4 and int8: equal precision on both sides."""
    quant = {"float32": {"method": "none"}, "int8": {"method": "int8_wo"}, "int4": model.int4}
    return {**quant[precision], **({"quantize_lm_head": True} if head else {})}


def quantized_head(precision: str, profile: str) -> bool:
    """Whether forge's engine of this precision and profile carries a quantized lm_head."""
    return profile == "ort" and precision != "float32"


# -- building -------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "FORGE_HOME": str(WORK / "home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(THREADS),
        "FORGE_ORT_THREADS": str(THREADS),
    }


def forge_engine(model: Model, precision: str, profile: str, log: Any) -> Path:
    """Build (or find in the cache) the forge engine; returns its directory."""
    head = quantized_head(precision, profile)
    stages = forge_build(model, precision, profile, log, head=head)
    return Path(stages["build"]["path"]) / "engine"


def forge_build(
    model: Model,
    precision: str,
    profile: str,
    log: Any,
    *,
    head: bool,
    verify: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``forge build`` (through ``build``, or through ``verify`` when given); its stages."""
    suffix = "-head" if head else ""
    recipe = WORK / "recipes" / f"{model.name}-{precision}-{profile}{suffix}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema_version": 1,
        "name": recipe.stem,
        "source": {"path": str(model.hf_dir)},
        "convert": {"dtype": "float32"},
        "quantize": _quantize(model, precision, head),
        "build": {"profile": profile, **LIMITS, **_activations(precision, profile)},
        "verify": verify or {"enabled": False},
    }
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    log(f"forge build {recipe.name}")
    until = [] if verify else ["--until", "build"]
    run = subprocess.run(
        [PYTHON, "-m", "trtllm_forge", "build", str(recipe), *until, "--json"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if run.returncode:
        raise SystemExit(f"forge build {recipe} failed:\n{run.stderr[-3000:]}")
    return {s["stage"]: s for s in json.loads(run.stdout)["stages"]}


def _activations(precision: str, profile: str) -> dict[str, Any]:
    """Quantized ort engines use the int8-activation kernels, as the builder's CPU models do
    (accuracy_level 4): equal precision means the same kernels on both sides."""
    return {"int8_activations": True} if profile == "ort" and precision != "float32" else {}


def builder_model(model: Model, precision: str, builder_python: str, log: Any) -> Path | None:
    """onnxruntime-genai's model builder output for the same HF folder (cached by folder)."""
    out = WORK / "genai" / f"{model.name}-{precision}"
    if (out / "genai_config.json").is_file():
        return out
    args = {"float32": ["-p", "fp32"], "int4": ["-p", "int4"], "int8": ["-p", "int8"]}
    command = [
        builder_python,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model.hf_dir),
        "-o",
        str(out),
        *args[precision],
        "-e",
        "cpu",
        "-c",
        str(WORK / "genai-cache"),
    ]
    if precision == "int4":  # same block as forge's groups, the builder's CPU default kernel
        command += ["--extra_options", f"block_size={model.int4['group_size']}"]
    log(" ".join(command[1:]))
    run = subprocess.run(command, capture_output=True, text=True, env=_env())
    if run.returncode:
        log(f"  builder failed ({precision}): {run.stderr.strip().splitlines()[-1:]}")
        return None
    return out


# -- timing ---------------------------------------------------------------------------


def bench(runtime: str, target: Path, model: Model, log: Any, tokenizer: Path | None) -> dict:
    """One ``forge bench`` process: batch 1 and 8, 64-token prompts; its JSON report."""
    out = WORK / "reports" / f"{runtime}-{target.name}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        PYTHON, "-m", "trtllm_forge", "bench", str(target), "--runtime", runtime,
        "--batch-sizes", "1,8", "--input-len", "64", "--output-len", str(model.output_len),
        "--batches", str(model.batches), "--warmup", "1", "--threads", str(THREADS),
        "--out", str(out), "-q",
    ]  # fmt: skip
    if tokenizer is not None:
        command += ["--tokenizer", str(tokenizer)]
    log(f"forge bench {runtime} {target}")
    run = subprocess.run(command, capture_output=True, text=True, env=_env())
    if run.returncode:
        log(f"  bench failed: {run.stderr.strip()[-500:]}")
        return {"error": run.stderr.strip()[-2000:]}
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def weights_bytes(target: Path) -> int:
    """Bytes of the weights the graphs read (what a decode step streams from memory): a
    forge engine's from engine.json, since a rank folder built from the store also holds
    a link to the whole shard file whose tensors it references (engine/onnx/shared.py);
    any other folder's weight files."""
    meta = target / "engine.json"
    ranks = (
        (json.loads(meta.read_text()).get("onnx") or {}).get("ranks") if meta.is_file() else None
    )
    if ranks:
        return sum(r["data_bytes"] + ((r.get("shared") or {}).get("bytes") or 0) for r in ranks)
    suffixes = (".data", ".safetensors")
    return sum(f.stat().st_size for f in target.rglob("*") if f.name.endswith(suffixes))


def run_all(
    names: list[str],
    quick: bool,
    builder_python: str,
    log: Any,
    precisions: tuple[str, ...] = PRECISIONS,
    profiles: tuple[str, ...] = ("portable", "ort"),
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "machine": measure.machine(),
        "threads": THREADS,
        "quick": quick,
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": [],
    }
    for name in names:
        model = models(quick)[name]
        if name == "llama-1b":  # SmolLM2's tokenizer and vocabulary, so the builder converts it
            llama_1b_folder(DATA / "smollm2-135m", model.hf_dir.parent, log)
        if not (model.hf_dir / "config.json").is_file():
            raise SystemExit(f"{model.hf_dir} is missing: run python -m bench.data --hf-dir")
        targets: list[tuple[str, str, str, Path | None]] = []
        for precision in precisions:
            for profile in profiles:
                engine = forge_engine(model, precision, profile, log)
                targets.append((precision, f"forge {profile}", "forge", engine))
            peer = builder_model(model, precision, builder_python, log)
            targets.append((precision, "genai builder", "genai", peer))
        if "float32" in precisions:
            targets.append(("float32", "transformers", "transformers", model.hf_dir))
        for precision, label, runtime, target in targets:
            entry = {
                "model": name,
                "precision": precision,
                "target": label,
                "at": time.strftime("%H:%M UTC", time.gmtime()),
                # 1-minute load average as the timing starts: the machine is shared.
                "load": round(os.getloadavg()[0], 1),
            }
            if target is None:
                entry["report"] = {"error": "the builder could not produce this precision"}
            else:
                entry["report"] = bench(runtime, target, model, log, model.hf_dir)
            doc["runs"].append(entry)
            PARTIAL.write_text(json.dumps(doc, indent=1) + "\n")  # survives a broken run
        if "ort" in profiles:
            doc["accuracy"] = doc.get("accuracy", []) + head_accuracy(
                model, precisions, forge_build, log
            )
    doc["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return doc


# -- the document -----------------------------------------------------------------------


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# Engine performance: forge's two lowering profiles vs onnxruntime-genai and transformers",
        "",
        "Generated by `python -m bench.engine_perf` (rerun it to refresh; `--render-only` "
        "redraws this page from bench/results/engine_perf.json). Every figure is one "
        "`forge bench` process (the bench library's single timing loop, docs/bench.md) "
        "on the same machine in the same run, one process at a time: greedy decoding of "
        f"64-token prompts, {THREADS} intra-op threads, after one warm-up batch.",
        "",
        f"Run: {doc.get('started_at')} → {doc.get('finished_at', '(unfinished)')}. "
        f"Machine: {doc['machine'].get('cpu')}, {doc['machine'].get('cores')} cores "
        f"(shared with other jobs; load average at start {doc['machine'].get('load average at start')}), "
        f"{doc['machine'].get('ram')}.",
        "",
        "Columns: output tokens/s over the timed batches; TTFT and end-to-end p99 per request "
        "(ms); peak RSS of the process while timing; **weights MB** = the target's weight "
        "files (ONNX external data, or safetensors): about what one decode step streams "
        "from memory; **vs genai** = tokens/s ÷ the "
        "onnxruntime-genai builder's at the same precision and batch in this run; **load** = "
        "the machine's 1-minute load average as that process started (2 cores, shared with "
        "other jobs: above 2, every figure is slowed by contention, and unevenly).",
        "",
    ]
    missing = [m for m in models(False) if m not in {r["model"] for r in doc["runs"]}]
    if missing:
        lines += [
            f"Not in this run: {', '.join(missing)} (`--models {','.join(missing)} --merge` "
            "adds it).",
            "",
        ]
    for model in dict.fromkeys(r["model"] for r in doc["runs"]):
        lines += [f"## {model}", ""]
        for batch in (1, 8):
            lines += [
                f"### batch {batch}",
                "",
                "| precision | engine | tokens/s | TTFT p50 ms | e2e p99 ms | TPOT p99 ms | peak RSS MB | weights MB | vs genai | load |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            lines += _rows(doc, model, batch)
            lines.append("")
    lines += render_later(doc)
    lines += render_accuracy(doc)
    lines += _gpu_section()
    lines += render_goals(doc)
    return "\n".join(lines)


def _gpu_section() -> list[str]:
    """The H200 sessions (bench/engine_perf_gpu.py renders them from their results file)."""
    from bench.engine_perf_gpu import render_section

    return render_section()


def _rows(doc: dict[str, Any], model: str, batch: int) -> list[str]:
    order = ("forge portable", "forge ort", "genai builder", "transformers")
    runs = sorted(
        (r for r in doc["runs"] if r["model"] == model),
        key=lambda r: (
            r["target"] == "transformers",
            PRECISIONS.index(r["precision"]),
            order.index(r["target"]),
        ),
    )
    # A ratio only against the builder timed in the same run (--merge keeps older rows).
    peers = {
        (r["precision"], r.get("run")): scenario(r["report"], batch)
        for r in runs
        if r["target"] == "genai builder"
    }
    rows = []
    for r in runs:
        s = scenario(r["report"], batch)
        if s is None:
            error = r["report"].get("error", "not measured")
            rows.append(
                f"| {r['precision']} | {r['target']} | — | — | — | — | — | — | {error[:80]} | |"
            )
            continue
        peer = peers.get((r["precision"], r.get("run")))
        ratio = (
            f"{s['output_tokens_per_s'] / peer['output_tokens_per_s']:.2f}×"
            if peer and r["target"] != "genai builder"
            else ""
        )
        rows.append(
            f"| {r['precision']} | {r['target']} | {s['output_tokens_per_s']:.1f} | "
            f"{s['ttft_ms']['p50']:.0f} | {s['e2e_ms']['p99']:.0f} | {s['tpot_ms']['p99']:.1f} | "
            f"{s['peak_rss_bytes'] / 2**20:.0f} | {_mb(_weights(r['report']))} | {ratio} | "
            f"{r.get('load', '')} |"
        )
    return rows


def _weights(report: dict[str, Any]) -> int | None:
    target = Path(report.get("target", ""))
    return weights_bytes(target) if report.get("target") and target.is_dir() else None


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_perf", description=__doc__)
    parser.add_argument("--models", default="smollm2-135m,llama-1b")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and batches")
    parser.add_argument(
        "--builder-python",
        default="/tmp/genai-builder/bin/python",
        help="a Python with onnxruntime-genai, onnx-ir, onnxscript, torch, transformers",
    )
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--profiles", default="portable,ort")
    parser.add_argument(
        "--merge", action="store_true", help="add these runs to the committed results"
    )
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.render_only:
        doc = json.loads(RESULTS.read_text())
    else:
        previous = json.loads(RESULTS.read_text()) if args.merge else None
        doc = run_all(
            args.models.split(","),
            args.quick,
            args.builder_python,
            log,
            tuple(args.precisions.split(",")),
            tuple(args.profiles.split(",")),
        )
        if previous is not None:  # e.g. the 1B shape measured in a later, separate run
            doc = merge(previous, doc)
        RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    DOC.write_text(render(doc) + "\n")
    log(f"wrote {RESULTS} and {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
