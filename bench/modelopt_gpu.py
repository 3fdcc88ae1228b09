"""ModelOpt's own fake-quant perplexity for the formats whose forward needs CUDA.

    python3 -m bench.modelopt_gpu run --out DIR        # on the GPU machine
    python -m bench.modelopt_gpu merge DIR/modelopt_gpu.json   # here: into the results + doc

docs/quantization.md's 2026-formats rows (``python -m bench.quant_formats``) put ModelOpt's
fake-quant perplexity beside forge's. For nvfp4 and fp8_block, ModelOpt 0.47 cannot give it
on a CPU machine: its dynamic block quantizers are CUDA kernels ("amax must be a CUDA
tensor"). ``run`` measures it on the GPU machine on equal terms with the CPU rows:

* the same model: SmolLM2-135M's Q4_1 GGUF dequantized by forge's own fetch (float32);
* the same evaluation windows (``bench.quant.eval_windows`` with the settings the results
  file records) and the same calibration windows forge drew (``calibration_tokens``; their
  digest is recorded and checked by ``merge`` against the CPU rows' settings);
* float32 on the GPU with TF32 off. The float model's perplexity is measured there too, so
  the GPU/CPU difference of the kernels is in the results (``reference_ppl_cuda``).

ModelOpt's configurations: nvfp4 is ``NVFP4_DEFAULT_CFG`` (as the CPU attempt used);
fp8_block is ``FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG`` with forge's 64 x 64 weight tiles
(SmolLM2's sizes hold no 128 tiles) and its disabled input quantizer turned into FP8 with
dynamic per-(token, 64 channels) scales, forge's activation scheme.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from bench import lib
from bench import quant as qb

RESULTS = lib.RESULTS / "quant_formats.json"
FP8_BLOCK = 64
LABELS = {"nvfp4": ("nvfp4 (modelopt folder)", "nvfp4 (compressed-tensors folder)")}
LABELS["fp8_block"] = (f"fp8_block b{FP8_BLOCK}",)
# Why a run's error means "no counterpart" rather than a failed measurement (read in ModelOpt
# 0.47's modelopt/torch/quantization/tensor_quant.py after the GPU run raised it).
NO_COUNTERPART = {
    "fp8_block": (
        "ModelOpt 0.47 has no configuration with forge's numerics: its dynamic block quantizer "
        "takes only block scales in a narrow float format (E8M0 for MX, E4M3 for NVFP4; "
        "DynamicBlockQuantizationFunction asserts scale_bits is given), so FP8 activations "
        "with float32 scales per (token, 64 channels) cannot be expressed (on the H200: "
        "AssertionError); its FP8_2D_BLOCKWISE preset is weight-only"
    )
}


def fp8_block_config(mtq: Any) -> dict[str, Any]:
    config = copy.deepcopy(mtq.FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG)
    for entry in config["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"] = {-1: FP8_BLOCK, -2: FP8_BLOCK}
        if entry.get("quantizer_name") == "*input_quantizer":
            entry.pop("enable", None)
            entry["cfg"] = {"num_bits": (4, 3), "block_sizes": {-1: FP8_BLOCK, "type": "dynamic"}}
    return config


def case_for(method: str, s: qb.Settings) -> qb.Case:
    if method == "nvfp4":
        return qb.Case("nvfp4", "nvfp4", samples=s.samples)
    return qb.Case(f"fp8_block b{FP8_BLOCK}", "fp8_block", {"block_size": FP8_BLOCK}, samples=0)


def gpu_ppl(model: Any, windows: Any) -> float:
    return lib.window_perplexity(lambda ids: lib.hf_logits(model, ids), windows)


def measure(method: str, s: qb.Settings, windows: Any, progress: Any) -> dict[str, Any]:
    import torch

    from trtllm_forge.engine.verify import load_reference
    from trtllm_forge.quant.modelopt_glue import mtq, quiet

    module = mtq(progress)
    model = load_reference(lib.MODEL).cuda()
    case = case_for(method, s)
    data = qb.calibration_tokens(case, s) if case.samples else None

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for ids in data.batches(qb.CALIB_BATCH) if data is not None else []:
                m.model(input_ids=ids.cuda())

    config = copy.deepcopy(module.NVFP4_DEFAULT_CFG) if method == "nvfp4" else None
    config = config or fp8_block_config(module)
    started = time.perf_counter()
    with quiet(progress):
        module.quantize(model, config, forward_loop if data is not None else None)
    return {
        "method": method,
        "ppl_modelopt": gpu_ppl(model, windows),
        "modelopt_seconds": time.perf_counter() - started,
        "modelopt_calibration_digest": data.digest if data is not None else None,
        "modelopt_config": json.loads(json.dumps(config, default=str)),
    }


def run(out: Path) -> None:
    import torch

    from trtllm_forge.engine.verify import load_reference
    from trtllm_forge.sources import gguf_to_hf

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if not (lib.MODEL / "config.json").is_file():
        gguf_to_hf(lib.DATA / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf", lib.MODEL)
    saved = json.loads(RESULTS.read_text())
    s = qb.Settings(**{k: v for k, v in saved["settings"].items() if k != "smoothquant"})
    windows = lib.eval_windows(s.windows, s.window_len)
    progress = qb.StderrProgress()
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": torch.cuda.get_device_name(0),
        "versions": qb.versions(),
        "reference_ppl_cuda": gpu_ppl(load_reference(lib.MODEL).cuda(), windows),
        "reference_ppl_cpu": saved["reference_ppl"],
        "rows": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    for method in ("nvfp4", "fp8_block"):
        try:
            doc["rows"].append(measure(method, s, windows, progress))
        except Exception as exc:  # recorded: the figure could not be made
            doc["rows"].append({"method": method, "error": f"{type(exc).__name__}: {exc}"[:500]})
        (out / "modelopt_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")


def merge(path: Path) -> None:
    """Put the GPU figures into the results file's rows, then re-render the doc."""
    from bench.quant_formats_doc import write

    gpu = json.loads(path.read_text())
    results = json.loads(RESULTS.read_text())
    where = f"{gpu['gpu']}, {gpu['date']}, `python3 -m bench.modelopt_gpu run`"
    for row in gpu["rows"]:
        if "ppl_modelopt" not in row:
            for label in LABELS[row["method"]]:
                reason = NO_COUNTERPART.get(row["method"], "")
                results["rows"][label]["modelopt_error"] = reason or row.get("error")
            continue
        for label in LABELS[row["method"]]:
            target = results["rows"][label]
            target.pop("modelopt_error", None)
            target["ppl_modelopt"] = row["ppl_modelopt"]
            target["modelopt_where"] = where
            target["modelopt_reference_ppl_cuda"] = gpu["reference_ppl_cuda"]
            target["modelopt_calibration_digest"] = row.get("modelopt_calibration_digest")
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    write(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modelopt_gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("--out", type=Path, required=True)
    sub.add_parser("merge").add_argument("path", type=Path)
    args = parser.parse_args(argv)
    run(args.out) if args.command == "run" else merge(args.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
