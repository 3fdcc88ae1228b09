"""Calibration time and perplexity: forge's calibrate stage versus ModelOpt called directly.

    python -m bench.gpu_calib --model bench/.data/smollm2-135m [--device cuda] \\
        [--methods awq,gptq,smoothquant] [--samples 64] [--seq-len 256] [--out results.json]

For each method both sides get the same calibration windows (forge's own
sampler over the same text) and the same numerics (INT4 groups of 64 for AWQ
and GPTQ, GPTQ damping 0.01, SmoothQuant alpha 0.5 with INT8 weights and
activations):

- forge: ``trtllm_forge.quant.quantize.quantize_checkpoint`` as the calibrate
  stage runs it (it loads the HF model in float32 on the CPU: forge has no GPU
  calibration path), timed end to end; perplexity from the written checkpoint
  through forge's fake-quant reference forward (float32, CPU).
- ModelOpt: the HF model in float16 on ``--device`` (float32 on a CPU),
  ``mtq.quantize`` with the preset and the same numerics, timed around
  ``mtq.quantize``; perplexity of the fake-quantized model on that device.

Perplexity is over ``--eval-windows`` windows of ``--eval-len`` tokens of the
evaluation text (bench/.data/enwiki-eval.txt from ``python -m bench.data``),
which is kept apart from the calibration text.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / ".data"
GROUP = 64  # SmolLM2-135M: hidden 576 = 9 x 64, so 128-wide groups do not fit
FORGE_PARAMS: dict[str, dict[str, Any]] = {
    "awq": {"group_size": GROUP},
    "gptq": {"group_size": GROUP, "damping": 0.01, "act_order": False},
    "smoothquant": {"alpha": 0.5, "activations": "per_tensor"},
}


def modelopt_config(mtq: Any, method: str) -> dict[str, Any]:
    """The ModelOpt preset with the same numerics as FORGE_PARAMS[method]."""
    if method == "awq":
        config = copy.deepcopy(mtq.INT4_AWQ_CFG)
    elif method == "gptq":
        config = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
        config["algorithm"] = {"method": "gptq", "perc_damp": 0.01, "block_size": 2 * GROUP}
    else:
        config = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
        config["algorithm"] = {"method": "smoothquant", "alpha": 0.5}
    if method in ("awq", "gptq"):
        for entry in config["quant_cfg"]:
            if entry.get("quantizer_name") == "*weight_quantizer" and "cfg" in entry:
                entry["cfg"]["block_sizes"] = {-1: GROUP, "type": "static"}
    return config


def perplexity(logits_of: Callable[[Any], Any], windows: Any) -> float:
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            logits = logits_of(ids[None]).float()[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, ids[1:].to(logits.device), reduction="sum"))
            count += ids.numel() - 1
    return math.exp(nll / count)


def eval_windows(model_dir: Path, text: Path, n: int, length: int) -> Any:
    from trtllm_forge.quant import calibration as calib

    tokens = calib.token_stream(calib.read_documents(text), calib.load_tokenizer(model_dir))
    if len(tokens) < n * length:
        raise SystemExit(f"{text} has {len(tokens)} tokens, fewer than {n} x {length}")
    import torch

    return torch.tensor(tokens[: n * length]).reshape(n, length)


def load_hf(model_dir: Path, device: str) -> Any:
    import torch
    import transformers

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return model.to(device).eval()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_forge(method: str, model_dir: Path, canonical: Path, work: Path, tokens: Any, windows: Any) -> dict[str, Any]:
    from trtllm_forge.quant.fakequant import FakeQuantForward
    from trtllm_forge.quant.quantize import quantize_checkpoint

    out = work / f"forge-{method}"
    t0 = time.perf_counter()
    quantize_checkpoint(hf_dir=model_dir, canonical_dir=canonical, out_dir=out, method=method,
                        params=FORGE_PARAMS[method], calibration=tokens)
    seconds = time.perf_counter() - t0
    forward = FakeQuantForward(out)
    try:
        ppl = perplexity(forward.logits, windows)
    finally:
        forward.close()
    return {"seconds": seconds, "perplexity": ppl, "device": "cpu", "dtype": "float32"}


def run_modelopt(method: str, model_dir: Path, device: str, tokens: Any, windows: Any) -> dict[str, Any]:
    import modelopt.torch.quantization as mtq
    import torch

    model = load_hf(model_dir, device)
    batches = [b.to(device) for b in tokens.split(8)]

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for ids in batches:
                m(input_ids=ids)

    _sync(device)
    t0 = time.perf_counter()
    mtq.quantize(model, modelopt_config(mtq, method), forward_loop)
    _sync(device)
    seconds = time.perf_counter() - t0
    ppl = perplexity(lambda ids: model(input_ids=ids.to(device)).logits, windows)
    dtype = "float16" if device.startswith("cuda") else "float32"
    return {"seconds": seconds, "perplexity": ppl, "device": device, "dtype": dtype}


def baseline_perplexity(model_dir: Path, device: str, windows: Any) -> float:
    model = load_hf(model_dir, device)
    return perplexity(lambda ids: model(input_ids=ids.to(device)).logits, windows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_calib", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DATA / "smollm2-135m", help="HF model folder")
    parser.add_argument("--device", default=None, help="ModelOpt's device (default: cuda when available)")
    parser.add_argument("--methods", default="awq,gptq,smoothquant")
    parser.add_argument("--calib-file", type=Path, default=DATA / "calib" / "wiki-summaries.txt")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-text", type=Path, default=DATA / "enwiki-eval.txt")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-len", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant import calibration as calib

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    calib_file = args.calib_file if args.calib_file.is_file() else None  # else forge's built-in corpus
    spec = calib.CalibrationSpec(file=calib_file, samples=args.samples, seq_len=args.seq_len, seed=0)
    tokens = calib.load_calibration(spec, args.model).tokens
    windows = eval_windows(args.model, args.eval_text, args.eval_windows, args.eval_len)
    results: dict[str, Any] = {
        "model": str(args.model), "device": device, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "calibration": {"file": str(calib_file), "samples": args.samples, "seq_len": args.seq_len},
        "eval": {"text": str(args.eval_text), "windows": args.eval_windows, "len": args.eval_len},
    }
    results["baseline_perplexity"] = baseline_perplexity(args.model, device, windows)
    with tempfile.TemporaryDirectory(prefix="forge-calib-") as tmp:
        work = Path(tmp)
        convert_hf_checkpoint(args.model, work / "canonical", dtype="float32")
        for method in args.methods.split(","):
            results[method] = {
                "modelopt": run_modelopt(method, args.model, device, tokens, windows),
                "forge": run_forge(method, args.model, work / "canonical", work, tokens, windows),
            }
            print(json.dumps({method: results[method]}), flush=True)
    print(render(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def render(results: dict[str, Any]) -> str:
    lines = [f"baseline perplexity ({results['device']}): {results['baseline_perplexity']:.3f}", "",
             "| method | forge: calibrate stage | forge perplexity | ModelOpt direct: mtq.quantize | "
             "ModelOpt perplexity |", "|---|---|---|---|---|"]
    for method in FORGE_PARAMS:
        if method not in results:
            continue
        f, m = results[method]["forge"], results[method]["modelopt"]
        lines.append(f"| {method} | {f['seconds']:.1f} s ({f['device']}, {f['dtype']}) | {f['perplexity']:.3f} | "
                     f"{m['seconds']:.1f} s ({m['device']}, {m['dtype']}) | {m['perplexity']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
