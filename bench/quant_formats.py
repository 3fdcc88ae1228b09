"""The 2026 formats of issue 18 on SmolLM2-135M: fp8_block, w4a8_awq and nvfp4, each
through the artifact forge ships and that artifact's real loader, beside ModelOpt's own
fake quantization; writes the "2026 formats" section of docs/quantization.md.

    OMP_NUM_THREADS=1 python -m bench.quant_formats --method w4a8_awq   # one method a run
    python -m bench.quant_formats --render                              # the doc, no runs

Rows accumulate in bench/results/quant_formats.json (by label; every run must see the
reference perplexity the file holds, i.e. the same evaluation windows as ``bench.quant``).

* fp8_block (b64: 128 divides none of SmolLM2-135M's 576 / 192 sizes) and w4a8_awq (g64)
  run as ``bench.quant`` runs them: forge builds the ONNX Runtime engine, which
  ``OrtEngine`` (the runtime verify uses) scores; ModelOpt's figure is ``mtq.quantize``
  with the matching preset on the very calibration windows forge drew.
* nvfp4 has no ONNX engine (ONNX Runtime 1.31's CPU provider cannot quantize to
  FLOAT4E2M1), so forge builds the Hugging Face folders (``build.backend: hf``) and
  verify's loaders read them: forge's float32 reader for the ModelOpt format, transformers
  + compressed-tensors (bfloat16, the dtype the library unpacks NVFP4 to) for the other.
  ModelOpt calibrates NVFP4 on the CPU but its fake-quant forward needs CUDA; the row
  records the error ModelOpt raises.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import lib
from bench import quant as qb

RESULTS = lib.RESULTS / "quant_formats.json"
COMMAND = "OMP_NUM_THREADS=1 python -m bench.quant_formats"
METHODS = ("fp8_block", "w4a8_awq", "nvfp4")
HF_TARGETS = ("modelopt", "compressed-tensors")
FP8_BLOCK_NO_MODELOPT = (
    "ModelOpt 0.47's 2-D block FP8 preset (FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG) is weight-only, "
    "and its dynamic block quantizer, which per-(token, 64 channels) FP8 activations would "
    "need, runs only on CUDA"
)


def cases(method: str, s: qb.Settings) -> list[qb.Case]:
    if method in ("fp8_block", "w4a8_awq"):
        return qb.build_cases([method], [64], s)
    return [qb.Case("nvfp4", "nvfp4", samples=s.samples)]


# -- nvfp4: the Hugging Face folders ---------------------------------------------------------


def build_folder(case: qb.Case, target: str, s: qb.Settings, tmp: Path, progress: Any) -> dict:
    """fetch → convert → calibrate → build (``backend: hf``) through forge's pipeline runner."""
    doc = qb.recipe_doc(case, s)
    doc["name"] = f"{doc['name']}-{target}"
    doc["build"] = {"backend": "hf", "format": target}
    recipe = tmp / f"{case.slug}-{target}.yaml"
    results = lib.forge_build(doc, recipe, home=qb.HOME, progress=progress)
    calibrated, built = results.artifacts["calibrate"], results.artifacts["build"]
    folder = Path(built.path) / str(built.info["hf_dir"])
    return {
        "recipe": doc,
        "stages": {r.stage: {"status": r.status, "seconds": round(r.seconds, 2)} for r in results},
        "calibrate_seconds": calibrated.manifest.get("seconds"),
        "quantized_modules": len(calibrated.info.get("quantized_modules") or []),
        "calibration": calibrated.info.get("calibration"),
        "checkpoint": str(lib.checkpoint_of(calibrated)),
        "folder": str(folder),
        "folder_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors")),
    }


def fake_quant_logits(ckpt: Path, windows: Any) -> list[Any]:
    """forge's fake quant of the checkpoint on every window (both folders share it)."""
    from trtllm_forge.quant.fakequant import FakeQuantForward

    fake = FakeQuantForward(ckpt)
    try:
        return [lib.fake_quant_logits(fake)(ids) for ids in windows]
    finally:
        fake.close()


def evaluate_folder(fake: list[Any], folder: Path, windows: Any, ref: qb.Reference) -> dict:
    """The folder through verify's loader, against the float reference and the fake quant."""
    import numpy as np

    from trtllm_forge.engine import metrics
    from trtllm_forge.hf.verify import load_folder_model

    model = load_folder_model(folder)
    nll_loaded, kl, top1, loaded_vs_fake = [], [], [], lib.Divergence()
    for ids, ref_logits, fq in zip(windows, ref.logits, fake, strict=True):
        loaded = lib.hf_logits(model, ids)
        nll_loaded.append(lib.nll(loaded, ids))
        kl.append(metrics.kl_per_token(ref_logits, loaded))
        top1.append(metrics.top1_matches(ref_logits, loaded))
        loaded_vs_fake.add(loaded, fq)
    return {
        "ppl_fakequant": lib.perplexity(
            [lib.nll(fq, ids) for fq, ids in zip(fake, windows, strict=True)]
        ),
        "ppl_artifact": lib.perplexity(nll_loaded),
        "kl_artifact": float(np.concatenate(kl).mean()),
        "top1_artifact": float(np.concatenate(top1).mean()),
        "artifact_vs_fakequant": loaded_vs_fake.as_dict(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def modelopt_nvfp4(case: qb.Case, s: qb.Settings, windows: Any, progress: Any) -> dict[str, Any]:
    """ModelOpt's NVFP4_DEFAULT_CFG on the HF model: calibrates on the CPU; the first
    fake-quant forward raises (its dynamic block quantizer is a CUDA kernel)."""
    import torch

    from trtllm_forge.engine.verify import load_reference
    from trtllm_forge.quant.modelopt_glue import mtq, quiet

    module = mtq(progress)
    model = load_reference(lib.MODEL)
    data = qb.calibration_tokens(case, s)

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for ids in data.batches(qb.CALIB_BATCH):
                m.model(input_ids=ids)

    with quiet(progress):
        module.quantize(model, copy.deepcopy(module.NVFP4_DEFAULT_CFG), forward_loop)
    try:
        ppl = lib.window_perplexity(lambda ids: lib.hf_logits(model, ids), windows)
    except Exception as exc:  # recorded: the figure does not exist on this machine
        return {"modelopt_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"ppl_modelopt": ppl}


def run_nvfp4(case: qb.Case, s: qb.Settings, windows: Any, ref: qb.Reference, progress: Any):
    rows, fake = [], None
    with tempfile.TemporaryDirectory(prefix="forge-quant-formats-") as tmp:
        for target in HF_TARGETS:
            started = time.perf_counter()
            label = f"nvfp4 ({target} folder)"
            progress.log(f"== {label}: forge build")
            row: dict[str, Any] = {"case": asdict(case), "label": label, "target": target}
            row.update(build_folder(case, target, s, Path(tmp), progress))
            if fake is None:
                progress.log(f"== {label}: evaluating the checkpoint (fake quant)")
                fake = fake_quant_logits(Path(row["checkpoint"]), windows)
            progress.log(f"== {label}: evaluating the folder (loader)")
            row.update(evaluate_folder(fake, Path(row["folder"]), windows, ref))
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
    if s.modelopt:
        progress.log("== nvfp4: ModelOpt mtq.quantize + evaluation")
        figure = modelopt_nvfp4(case, s, windows, progress)
        for row in rows:
            row.update(figure)
    return rows


# -- fp8_block, w4a8_awq: bench.quant's ONNX Runtime rows -------------------------------------


def run_engine(case: qb.Case, s: qb.Settings, windows: Any, ref: qb.Reference, progress: Any):
    with tempfile.TemporaryDirectory(prefix="forge-quant-formats-") as tmp:
        row = qb.run_case(case, s, qb.HOME, Path(tmp), windows, ref, progress)
    return [engine_row(row)]


def engine_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``bench.quant`` row in this table's terms (its artifact is the ORT engine)."""
    row = dict(row)
    row["target"] = "onnxruntime engine"
    row["ppl_artifact"] = row.pop("ppl_engine")
    row["kl_artifact"] = row.pop("kl_engine")
    row["top1_artifact"] = row.pop("top1_engine")
    row["artifact_vs_fakequant"] = row.pop("engine_vs_fakequant")
    if row["case"]["method"] == "fp8_block" and "ppl_modelopt" not in row:
        row["modelopt_error"] = FP8_BLOCK_NO_MODELOPT
    return row


def from_bench_quant(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rows of these methods that ``python -m bench.quant --json PATH`` measured (same code)."""
    saved = json.loads(path.read_text())
    rows = [engine_row(r) for r in saved["rows"] if r["case"]["method"] in METHODS]
    new = {"reference_ppl": saved["reference_ppl"], "settings": saved["settings"], "rows": rows}
    note = f" (rows added by `python -m bench.quant_formats --from-bench-quant {path.name}`)"
    return new, [{**run, "command": run["command"] + note} for run in saved["runs"]]


# -- driver ----------------------------------------------------------------------------------


def measure(method: str, s: qb.Settings, progress: qb.StderrProgress) -> dict[str, Any]:
    windows = lib.eval_windows(s.windows, s.window_len)
    progress.log(f"reference: transformers float32 on {s.windows} x {s.window_len} tokens")
    ref = qb.Reference(windows)
    rows = []
    for case in cases(method, s):
        run = run_nvfp4 if case.method == "nvfp4" else run_engine
        rows += run(case, s, windows, ref, progress)
    return {"reference_ppl": ref.ppl, "settings": asdict(s), "rows": rows}


def merge(previous: dict[str, Any] | None, new: dict[str, Any], runs: list[dict]) -> dict:
    if previous is None:
        return {**new, "rows": {r["label"]: r for r in new["rows"]}, "runs": runs}
    if abs(previous["reference_ppl"] - new["reference_ppl"]) > 1e-9:
        raise SystemExit(f"{RESULTS} holds other evaluation windows (reference perplexity)")
    rows = {**previous["rows"], **{r["label"]: r for r in new["rows"]}}
    return {**previous, "rows": rows, "runs": [*previous["runs"], *runs]}


def save(new: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else None
    results = merge(previous, new, runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quant_formats", description=__doc__)
    p.add_argument("--method", choices=METHODS, help="the one method this run measures")
    p.add_argument("--render", action="store_true", help="only write the doc from the JSON")
    p.add_argument("--no-modelopt", action="store_true", help="skip ModelOpt's own figure")
    p.add_argument(
        "--from-bench-quant", type=Path, help="add the rows of a `bench.quant --json` file"
    )
    args = p.parse_args(argv)
    from bench.quant_formats_doc import write

    if args.from_bench_quant is not None:
        write(save(*from_bench_quant(args.from_bench_quant)))
        return 0
    if args.render or args.method is None:
        write(json.loads(RESULTS.read_text()))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    s = qb.Settings(modelopt=not args.no_modelopt)
    progress = qb.StderrProgress()
    started = time.perf_counter()
    command = f"{COMMAND} " + " ".join(argv if argv is not None else sys.argv[1:])
    new = measure(args.method, s, progress)
    run = {
        "command": command,
        "machine": qb.machine(),
        "versions": qb.versions(),
        "wall_seconds": time.perf_counter() - started,
    }
    write(save(new, [run]))
    progress.log(f"wrote {RESULTS} and docs/quantization.md ({run['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
