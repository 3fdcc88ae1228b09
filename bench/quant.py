"""Quantization quality of every forge method on SmolLM2-135M, next to ModelOpt's own
fake quantization; writes docs/quantization.md.

    python -m bench.quant [--group-sizes 128,64] [--methods awq,gptq] [--quick]

Needs `make data` (bench/.data). Each method is built by forge itself: a recipe per
method is written into a temp dir and `fetch → convert → calibrate → build` runs
in-process through the pipeline runner, against a dedicated FORGE_HOME
(bench/.data/quant-home by default), so a rerun only evaluates.

Per method, on the same evaluation windows (the first ~200 KB of the gensim
Wikipedia text, kept apart from the calibration text):

* perplexity of the quantized checkpoint through forge's float32 fake-quant
  forward (``FakeQuantForward``);
* perplexity, KL(reference ‖ engine) and top-1 agreement of the ONNX Runtime
  engine, scored directly with ``trtllm_forge.engine.runtime`` against the
  transformers float32 reference logits (computed once);
* perplexity of the HF model fake-quantized by ModelOpt itself (``mtq.quantize``
  with the matching preset and block size), calibrated on the very token windows
  forge drew (``trtllm_forge.quant.calibration``; their digest is checked against
  the one the calibrate artifact records).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import lib
from bench.lib import (
    DATA,
    DOCS,
    EVAL_TEXT,
    MODEL,
    Divergence,
    checkpoint_of,
    engine_of,
    eval_windows,
    fake_quant_logits,
    hf_logits,
    nll,
    perplexity,
    window_perplexity,
)

CALIB_TEXT = DATA / "calib" / "wiki-summaries.txt"
HOME = DATA / "quant-home"
DOC = DOCS / "quantization.md"
CALIB_BATCH = 8  # the batch size forge's calibration passes use too

METHODS = (
    "none",
    "int8_wo",
    "int4_wo",
    "awq",
    "gptq",
    "smoothquant",
    "fp8",
    "int8_wo+kv_int8",
    "fp8+kv_fp8",
    "fp8_block",
    "w4a8_awq",
)
GROUPED = ("int4_wo", "awq", "gptq", "w4a8_awq")
# fp8_block's tile edge here: 128 divides none of SmolLM2-135M's 576 / 192 sizes.
FP8_BLOCK_SIZE = 64
DEFAULT_METHODS = METHODS[:7]  # the KV-cache variants cost ~5 min each more: ask for them
QUICK_METHODS = ("none", "int8_wo", "int4_wo")

# HF linear → the TensorRT-LLM module it is fused into, and the config size its input has.
HF_LINEARS = {
    "q_proj": ("attention.qkv", "hidden"),
    "k_proj": ("attention.qkv", "hidden"),
    "v_proj": ("attention.qkv", "hidden"),
    "o_proj": ("attention.dense", "attn"),
    "gate_proj": ("mlp.fc", "hidden"),
    "up_proj": ("mlp.gate", "hidden"),
    "down_proj": ("mlp.proj", "intermediate"),
}


@dataclass(frozen=True)
class Case:
    """One row of the table: a forge quantize section and its ModelOpt counterpart."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    kv_cache: str = "none"
    samples: int = 0  # calibration windows (0: the method reads no calibration text)
    excluded_hf: tuple[str, ...] = ()  # HF linear kinds left unquantized (group size misfit)

    @property
    def group_size(self) -> int | None:
        return self.params.get("group_size")

    @property
    def slug(self) -> str:
        plain = self.label.replace("α", "a").replace("=", "")
        return plain.replace(" ", "-").replace("+", "-")


@dataclass
class Settings:
    windows: int = 8
    window_len: int = 512
    samples: int = 64
    seq_len: int = 256
    gptq_samples: int = 16
    awq_samples: int = 8
    modelopt: bool = True
    # SmoothQuant configurations (alpha, activation granularity), one row each
    smoothquant: tuple[tuple[float, str], ...] = (
        (0.5, "per_tensor"),
        (0.8, "per_tensor"),
        (0.5, "per_token"),
    )


# -- cases --------------------------------------------------------------------------------


def model_sizes(model_dir: Path = MODEL) -> dict[str, int]:
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return {
        "hidden": config["hidden_size"],
        "attn": config["num_attention_heads"] * head_dim,
        "intermediate": config["intermediate_size"],
    }


def misfit_linears(group_size: int, sizes: dict[str, int]) -> tuple[str, ...]:
    """HF linear kinds whose input size is not a multiple of ``group_size``.

    TensorRT-LLM's group-wise INT4 layout has no partial groups, so forge refuses
    them; SmolLM2's 576-wide inputs (hidden, 9 heads x 64) do not fit groups of 128.
    """
    return tuple(kind for kind, (_, size) in HF_LINEARS.items() if sizes[size] % group_size)


def build_cases(methods: list[str], group_sizes: list[int], s: Settings) -> list[Case]:
    sizes = model_sizes()
    cases: list[Case] = []
    for name in methods:
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        if name in GROUPED:
            samples = {"awq": s.awq_samples, "w4a8_awq": s.awq_samples}.get(name, 0)
            samples = {"gptq": s.gptq_samples}.get(name, samples)
            for g in group_sizes:
                cases.append(
                    Case(
                        f"{name} g{g}",
                        name,
                        {"group_size": g},
                        samples=samples,
                        excluded_hf=misfit_linears(g, sizes),
                    )
                )
        elif name == "smoothquant":
            for alpha, activations in s.smoothquant:
                label = f"smoothquant α={alpha:g} {activations.replace('_', '-')}"
                params = {"alpha": alpha, "activations": activations}
                cases.append(Case(label, name, params, samples=s.samples))
        elif name == "fp8":
            cases.append(Case(name, name, {"granularity": "per_tensor"}, samples=s.samples))
        elif name == "fp8_block":
            params = {"block_size": FP8_BLOCK_SIZE}
            cases.append(Case(f"fp8_block b{FP8_BLOCK_SIZE}", name, params))
        elif "+kv_" in name:
            method, kv = name.split("+kv_")
            cases.append(Case(f"{method} + kv {kv}", method, kv_cache=kv, samples=s.samples))
        else:
            cases.append(Case(name, name))
    return cases


# -- forge ---------------------------------------------------------------------------------


class StderrProgress:
    """forge's Progress protocol, printed to stderr with the time since start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def log(self, message: str) -> None:
        if "modelopt:" in message and ("warning" in message or "Relative MSE" in message):
            return  # version warnings on every import, one GPTQ error line per linear
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        start = time.perf_counter()
        yield _NoTask()
        self.log(f"{description}: {time.perf_counter() - start:.1f}s")


class _NoTask:
    def advance(self, amount: float = 1.0) -> None:
        pass


def recipe_doc(case: Case, s: Settings) -> dict[str, Any]:
    quantize: dict[str, Any] = {"method": case.method, "kv_cache": case.kv_cache, **case.params}
    fused = sorted({HF_LINEARS[kind][0] for kind in case.excluded_hf})
    quantize["exclude"] = ["lm_head", *(f"*{module}" for module in fused)]
    if case.samples:
        quantize["calibration"] = {
            "file": str(CALIB_TEXT),
            "samples": case.samples,
            "seq_len": s.seq_len,
            "seed": 0,
        }
    return {
        "schema_version": 1,
        "name": f"quant-bench-{case.slug}",
        "source": {"path": str(MODEL)},
        "convert": {"dtype": "float32"},
        "quantize": quantize,
        "build": {
            "backend": "onnxruntime",
            "max_batch_size": 1,
            "max_input_len": s.window_len // 2,
            "max_seq_len": s.window_len,
        },
        "verify": {"enabled": False},
    }


def forge_build(
    case: Case, s: Settings, home: Path, workdir: Path, progress: Any
) -> dict[str, Any]:
    """fetch → convert → calibrate → build through forge's pipeline runner."""
    recipe = workdir / f"{case.slug}.yaml"
    results = lib.forge_build(recipe_doc(case, s), recipe, home=home, progress=progress)
    calibrated, built = results.artifacts["calibrate"], results.artifacts["build"]
    ckpt = checkpoint_of(calibrated)
    info = calibrated.info
    return {
        "recipe": recipe_doc(case, s),
        "stages": {r.stage: {"status": r.status, "seconds": round(r.seconds, 2)} for r in results},
        "calibrate_seconds": None
        if info.get("passthrough")
        else calibrated.manifest.get("seconds"),
        "build_seconds": built.manifest.get("seconds"),
        "size_bytes": (ckpt / "rank0.safetensors").stat().st_size,
        "layers_bytes": layer_bytes(ckpt / "rank0.safetensors"),
        "quantized_modules": len(info.get("quantized_modules") or []),
        "calibration": info.get("calibration"),
        "checkpoint": str(ckpt),
        "engine": str(engine_of(built)),
    }


def layer_bytes(path: Path) -> int:
    """Bytes of the decoder layers' tensors (the embedding and LM head stay float32)."""
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(
        meta["data_offsets"][1] - meta["data_offsets"][0]
        for name, meta in header.items()
        if name.startswith("transformer.layers.")
    )


# -- evaluation ----------------------------------------------------------------------------


class Reference:
    """The transformers float32 model's logits on every window (kept: every method needs them)."""

    def __init__(self, windows: Any) -> None:
        from trtllm_forge.engine.verify import load_reference

        model = load_reference(MODEL)
        self.logits = [hf_logits(model, ids) for ids in windows]
        self.ppl = perplexity([nll(lg, ids) for lg, ids in zip(self.logits, windows, strict=True)])


NUDGE = 1e-7  # relative: about one float32 ulp


def nudged(fake: Any, seed: int = 0) -> Any:
    """``fake`` with every linear's input multiplied by (1 + 1e-7·N(0,1)) before its
    activation quantization: float32 rounding noise of the size a different kernel (ONNX
    Runtime's) makes. How far this moves the logits is the noise floor of the format."""
    import torch

    forward = fake.forward
    quantize_input = forward.activation_hook
    generator = torch.Generator().manual_seed(seed)

    def hook(module: str, x: Any) -> Any:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return quantize_input(module, x * (1 + NUDGE * noise))

    forward.activation_hook = hook
    return fake


def quantizes_activations(ckpt: Path) -> bool:
    config = json.loads((ckpt / "config.json").read_text())
    algo = (config.get("quantization") or {}).get("quant_algo") or ""
    return algo.startswith(("W8A8", "FP8"))


def evaluate_forge(ckpt: Path, engine: Path, windows: Any, ref: Reference) -> dict[str, Any]:
    """Fake quant and the engine as forge ships it (``OrtEngine``, the runtime verify uses)."""
    import numpy as np

    from trtllm_forge.engine import metrics
    from trtllm_forge.engine.runtime import OrtEngine
    from trtllm_forge.quant.fakequant import FakeQuantForward

    fake = FakeQuantForward(ckpt)
    noisy = nudged(FakeQuantForward(ckpt)) if quantizes_activations(ckpt) else None
    fake_of = fake_quant_logits(fake)
    noisy_of = fake_quant_logits(noisy) if noisy is not None else None
    ort = OrtEngine.load(engine, threads=1)
    nll_fake, nll_eng, nll_nudged, kl, top1 = [], [], [], [], []
    engine_vs_fake, nudge_vs_fake = Divergence(), Divergence()
    try:
        for ids, ref_logits in zip(windows, ref.logits, strict=True):
            fq = fake_of(ids)
            eng = ort.score(ids.tolist())
            nll_fake.append(nll(fq, ids))
            nll_eng.append(nll(eng, ids))
            kl.append(metrics.kl_per_token(ref_logits, eng))
            top1.append(metrics.top1_matches(ref_logits, eng))
            engine_vs_fake.add(eng, fq)
            if noisy_of is not None:
                nudged_logits = noisy_of(ids)
                nudge_vs_fake.add(nudged_logits, fq)
                nll_nudged.append(nll(nudged_logits, ids))
    finally:
        fake.close()
        if noisy is not None:
            noisy.close()
    return {
        "ppl_fakequant": perplexity(nll_fake),
        "ppl_engine": perplexity(nll_eng),
        "kl_engine": float(np.concatenate(kl).mean()),
        "top1_engine": float(np.concatenate(top1).mean()),
        "engine_vs_fakequant": engine_vs_fake.as_dict(),
        "nudged_vs_fakequant": nudge_vs_fake.as_dict() if noisy is not None else None,
        "ppl_nudged": perplexity(nll_nudged) if noisy is not None else None,
    }


# -- ModelOpt's own fake quantization --------------------------------------------------------


def modelopt_config(mtq: Any, case: Case) -> dict[str, Any]:
    """The ModelOpt preset matching the case's numerics (block size, alpha, KV cache)."""
    presets = {
        "int8_wo": "INT8_WEIGHT_ONLY_CFG",
        "int4_wo": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
        "awq": "INT4_AWQ_CFG",
        "gptq": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
        "smoothquant": "INT8_SMOOTHQUANT_CFG",
        "fp8": "FP8_DEFAULT_CFG",
        "w4a8_awq": "W4A8_AWQ_BETA_CFG",
    }
    config = copy.deepcopy(getattr(mtq, presets[case.method]))
    if case.group_size:
        for entry in config["quant_cfg"]:
            if entry.get("quantizer_name") == "*weight_quantizer" and "cfg" in entry:
                # W4A8's weight quantizer is a sequence [INT4 groups, FP8]: the first one
                cfg = entry["cfg"][0] if isinstance(entry["cfg"], list) else entry["cfg"]
                cfg["block_sizes"] = {-1: case.group_size, "type": "static"}
    if case.method == "gptq":
        # forge's defaults: damping 0.01; ModelOpt's update block must hold whole groups.
        config["algorithm"] = {"method": "gptq", "perc_damp": 0.01, "block_size": 128}
    if case.method == "smoothquant":
        config["algorithm"] = {"method": "smoothquant", "alpha": case.params["alpha"]}
    if case.kv_cache == "fp8":
        config["quant_cfg"] += copy.deepcopy(mtq.FP8_KV_CFG)["quant_cfg"]
    if case.kv_cache == "int8":
        kv = {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": 8, "axis": None}}
        config["quant_cfg"].append(kv)
    for kind in case.excluded_hf:
        config["quant_cfg"].append({"quantizer_name": f"*{kind}*", "enable": False})
    return config


def per_token_smoothquant(case: Case) -> bool:
    """ModelOpt 0.47 has no preset for INT8 per-token activations (it calibrates the
    smoothing with static per-tensor activations, which the per_tensor row shows)."""
    return case.method == "smoothquant" and case.params.get("activations") == "per_token"


def no_modelopt_counterpart(case: Case) -> bool:
    """Cases ModelOpt 0.47 has no preset for: per-token SmoothQuant, and block FP8 with
    dynamic per-token-group activations (its FP8_2D_BLOCKWISE is weight-only)."""
    return per_token_smoothquant(case) or case.method == "fp8_block"


def calibration_tokens(case: Case, s: Settings) -> Any:
    from trtllm_forge.quant import calibration as calib

    spec = calib.CalibrationSpec(file=CALIB_TEXT, samples=case.samples, seq_len=s.seq_len, seed=0)
    return calib.load_calibration(spec, MODEL)


def evaluate_modelopt(case: Case, s: Settings, windows: Any, progress: Any) -> dict[str, Any]:
    import torch

    from trtllm_forge.engine.verify import load_reference
    from trtllm_forge.quant.modelopt_glue import mtq, quiet

    module = mtq(progress)
    model = load_reference(MODEL)
    data = calibration_tokens(case, s) if case.samples else None
    batches = data.batches(CALIB_BATCH) if data is not None else []

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for ids in batches:
                m.model(input_ids=ids)  # the LM head is never quantized: skip its FLOPs

    t0 = time.perf_counter()
    with quiet(progress):
        module.quantize(model, modelopt_config(module, case), forward_loop if batches else None)
    seconds = time.perf_counter() - t0
    ppl = window_perplexity(lambda ids: hf_logits(model, ids), windows)
    return {
        "ppl_modelopt": ppl,
        "modelopt_seconds": seconds,
        "modelopt_calibration_digest": data.digest if data is not None else None,
    }


# -- driver --------------------------------------------------------------------------------


def run_case(
    case: Case,
    s: Settings,
    home: Path,
    workdir: Path,
    windows: Any,
    ref: Reference,
    progress: StderrProgress,
) -> dict[str, Any]:
    progress.log(f"== {case.label}: forge build")
    started = time.perf_counter()
    row: dict[str, Any] = {"case": asdict(case), "label": case.label}
    row.update(forge_build(case, s, home, workdir, progress))
    progress.log(f"== {case.label}: evaluating checkpoint (fake quant) and engine (ORT)")
    row.update(evaluate_forge(Path(row["checkpoint"]), Path(row["engine"]), windows, ref))
    if s.modelopt and case.method != "none" and not no_modelopt_counterpart(case):
        progress.log(f"== {case.label}: ModelOpt mtq.quantize + evaluation")
        try:
            row.update(evaluate_modelopt(case, s, windows, progress))
        except Exception as exc:  # ModelOpt's side is a comparison: record, keep the run
            row["modelopt_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            progress.log(f"== {case.label}: ModelOpt failed: {row['modelopt_error']}")
        forge_digest = (row.get("calibration") or {}).get("digest")
        if forge_digest and row.get("modelopt_calibration_digest", forge_digest) != forge_digest:
            raise SystemExit(f"{case.label}: ModelOpt and forge calibrated on different windows")
    row["seconds"] = time.perf_counter() - started
    progress.log(
        f"== {case.label}: ppl fake-quant {row['ppl_fakequant']:.3f} engine {row['ppl_engine']:.3f}"
        f" modelopt {row.get('ppl_modelopt', float('nan')):.3f} (reference {ref.ppl:.3f})"
    )
    return row


def merge(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Add this run's rows to an earlier run's (same windows, so the same reference)."""
    if "runs" not in previous:  # a results file written before runs were listed
        keys = ("command", "machine", "versions", "wall_seconds")
        previous = {**previous, "runs": [{k: previous[k] for k in keys}]}
    if abs(previous["reference_ppl"] - new["reference_ppl"]) > 1e-9:
        raise SystemExit("--merge needs the same evaluation windows as the saved results")
    rows = {row["label"]: row for row in previous["rows"]}
    rows.update({row["label"]: row for row in new["rows"]})
    return {**previous, "rows": list(rows.values()), "runs": previous["runs"] + new["runs"]}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores (shared; load average {load:.1f} at the start), "
        f"Python {platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "transformers", "onnxruntime", "nvidia-modelopt")
    return {name: version(name) for name in names}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quant", description=__doc__.splitlines()[0])
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from: {', '.join(METHODS)} (default: all but the KV variants)",
    )
    p.add_argument("--group-sizes", default="128,64", help="for int4_wo, awq and gptq")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{', '.join(QUICK_METHODS)} (g64) on 2 windows; writes no doc by default",
    )
    p.add_argument("--windows", type=int, default=None, help="evaluation windows (default 8)")
    p.add_argument("--window-len", type=int, default=512)
    p.add_argument("--samples", type=int, default=64, help="calibration windows (SQ, FP8, KV)")
    p.add_argument("--gptq-samples", type=int, default=16)
    p.add_argument("--awq-samples", type=int, default=8)
    p.add_argument(
        "--smoothquant",
        default="0.5:per_tensor,0.8:per_tensor,0.5:per_token",
        help="SmoothQuant rows as ALPHA:per_tensor|per_token, comma-separated",
    )
    p.add_argument("--no-modelopt", action="store_true", help="skip ModelOpt's own numbers")
    p.add_argument("--home", type=Path, default=HOME, help="FORGE_HOME for the builds")
    p.add_argument("--out", type=Path, default=None, help="Markdown report (default: docs/…)")
    p.add_argument(
        "--json", type=Path, default=None, help="raw results (default: HOME/results.json)"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="add these methods' rows to the saved results (same windows) and re-render",
    )
    p.add_argument(
        "--from-json", type=Path, default=None, help="render the doc from saved results; no runs"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        from bench.quant_doc import render, write_doc

        write_doc(args.out or DOC, render(json.loads(args.from_json.read_text())))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if not MODEL.is_dir() or not EVAL_TEXT.is_file() or not CALIB_TEXT.is_file():
        raise SystemExit("bench/.data is incomplete: run `make data` first")
    s = Settings(
        windows=args.windows or (2 if args.quick else 8),
        window_len=args.window_len,
        samples=args.samples,
        gptq_samples=args.gptq_samples,
        awq_samples=args.awq_samples,
        modelopt=not args.no_modelopt,
        smoothquant=tuple(
            (float(alpha), activations)
            for alpha, activations in (item.split(":") for item in args.smoothquant.split(","))
        ),
    )
    default_methods = QUICK_METHODS if args.quick else DEFAULT_METHODS
    methods = args.methods.split(",") if args.methods else list(default_methods)
    group_sizes = [int(g) for g in args.group_sizes.split(",")] if not args.quick else [64]
    if args.quick and args.group_sizes != "128,64":
        group_sizes = [int(g) for g in args.group_sizes.split(",")]
    cases = build_cases(methods, group_sizes, s)
    progress = StderrProgress()
    started = time.perf_counter()
    command = "python -m bench.quant " + " ".join(argv if argv is not None else sys.argv[1:])
    run = {"command": command.rstrip(), "machine": machine(), "versions": versions()}
    windows = eval_windows(s.windows, s.window_len)
    progress.log(f"reference: transformers float32 on {s.windows} x {s.window_len} tokens")
    ref = Reference(windows)
    progress.log(f"reference perplexity {ref.ppl:.3f}")
    rows = []
    raw = args.json or args.home / "results.json"
    partial = raw.with_suffix(".partial.json")
    with tempfile.TemporaryDirectory(prefix="forge-quant-bench-") as tmp:
        for case in cases:
            rows.append(run_case(case, s, args.home, Path(tmp), windows, ref, progress))
            partial.write_text(json.dumps({"rows": rows}, indent=2, default=str) + "\n")
    run["wall_seconds"] = time.perf_counter() - started
    results = {"settings": asdict(s), "reference_ppl": ref.ppl, "rows": rows, "runs": [run]}
    if args.merge:
        results = merge(json.loads(raw.read_text()), results)
    from bench.quant_doc import render, write_doc

    out = args.out or (None if args.quick else DOC)
    raw.write_text(json.dumps(results, indent=2, default=str) + "\n")
    progress.log(f"raw results: {raw}")
    if out is not None:
        write_doc(out, render(results))
        progress.log(f"wrote {out}")
    else:
        print(render(results))
    progress.log(f"wall time {run['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
