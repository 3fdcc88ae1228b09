"""The GPU half of docs/engine-performance.md, run on the GPU machine (an H200).

    python3 -m bench.engine_perf_gpu --config DIR --out DIR

No checkpoint fits through the GPU machine's 64 MiB transfer, so the model is made there:
SmolLM2-135M's config.json and tokenizer (``--config``) with seeded random weights
(transformers' own initialisation), the same for every runtime. Then, each timed by
``forge bench`` in its own process (batch 1 and 8, 64-token prompts, 128 new tokens):

* forge portable (float32 compute) and forge ort (``compute_dtype: float16``) engines,
  run with ``--device cuda`` (CUDAExecutionProvider, KV cache bound on the device);
* onnxruntime-genai's model builder, ``-e cuda`` float16 and int4, run by
  onnxruntime-genai-cuda;
* transformers float32 on cuda.

It needs onnxruntime-gpu, onnxruntime-genai-cuda and the builder's onnx-ir/onnxscript
importable, and the CUDA 13 / cuDNN 9 libraries on LD_LIBRARY_PATH (the GPU machine's
torch carries them). Every report lands in ``--out`` as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

SEED = 0
LIMITS = {"max_batch_size": 8, "max_input_len": 64, "max_seq_len": 256}


def make_model(config_dir: Path, work: Path) -> Path:
    """SmolLM2's shape with seeded random weights, saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = work / "hf"
    torch.manual_seed(SEED)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (config_dir / name).is_file():
            shutil.copyfile(config_dir / name, hf / name)
    return hf


def forge_engines(hf: Path, work: Path) -> dict[str, Path]:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.engine.backends import BuildOptions, build_engine
    from trtllm_forge.engine.genai import write_genai_folder

    checkpoint = work / "ckpt-float16"
    convert_hf_checkpoint(hf, checkpoint, dtype="float16")
    options = BuildOptions(**LIMITS)
    engines = {
        "forge portable (float32 compute)": (work / "forge-portable", options),
        "forge ort float16": (
            work / "forge-ort16",
            replace(options, profile="ort", compute_dtype="float16"),
        ),
    }
    out = {}
    for label, (engine, opts) in engines.items():
        meta = build_engine("onnxruntime", checkpoint, engine, opts)
        write_genai_folder(engine, meta, hf)
        out[label] = engine
    return out


def builder_models(hf: Path, work: Path, log: Any) -> dict[str, Path]:
    out = {}
    for precision in ("fp16", "int4"):
        target = work / f"genai-{precision}"
        command = [
            sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
            "-o", str(target), "-p", precision, "-e", "cuda", "-c", str(work / "cache"),
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode:
            log(f"builder {precision} failed: {run.stderr[-1500:]}")
            continue
        out[f"genai builder {precision}"] = target
    return out


def bench(runtime: str, target: Path, device: str, tokenizer: Path, log: Any) -> dict[str, Any]:
    report = target.parent / f"report-{target.name}-{runtime}.json"
    command = [
        sys.executable, "-m", "trtllm_forge", "bench", str(target), "--runtime", runtime,
        "--batch-sizes", "1,8", "--input-len", "64", "--output-len", "128", "--batches", "2",
        "--warmup", "1", "--tokenizer", str(tokenizer), "--out", str(report), "-q",
    ]  # fmt: skip
    if runtime != "genai":
        command += ["--device", device]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    log(f"{runtime} {target.name}: rc {run.returncode} in {time.perf_counter() - started:.0f} s")
    if run.returncode:
        return {"error": (run.stderr or run.stdout)[-2000:]}
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.engine_perf_gpu")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/engine-perf-gpu"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    import onnxruntime as ort

    doc: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "gpu": subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "model": "SmolLM2-135M shape, seeded random weights (transformers init)",
        "runs": [],
    }
    hf = make_model(args.config, args.work)
    targets: list[tuple[str, str, str, Path]] = []
    for label, engine in forge_engines(hf, args.work).items():
        targets.append((label, "forge", "cuda", engine))
    for label, folder in builder_models(hf, args.work, log).items():
        targets.append((label, "genai", "cuda", folder))
    targets.append(("transformers float32", "transformers", "cuda", hf))
    for label, runtime, device, target in targets:
        doc["runs"].append({"target": label, "report": bench(runtime, target, device, hf, log)})
        (args.out / "engine_perf_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    doc["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (args.out / "engine_perf_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
