"""Verify's peak memory and wall time on a synthetic 0.5B-class model, at several text lengths.

    python -m bench.verify_memory                      # new code, 2,048 and 8,192 tokens
    python -m bench.verify_memory --before /tmp/forge-before --tokens 2048
    python -m bench.verify_memory --floor --tokens 2048    # FLOPs / this machine's GEMM rate
    python -m bench.verify_memory --layers 4 --tokens 1024 --results /tmp/profile.json

The model is a random-weight Qwen2 of Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads,
2 KV heads, MLP 4,864, vocabulary 151,936, tied embeddings; 494M parameters, 1.98 GB in
float32), converted and built as a float32 onnxruntime engine (max_seq_len 2,048,
max_input_len 512), all cached under bench/.data/verify-0.5b/. Each measurement is one
child process running ``verify_engine`` exactly as the verify stage does — 8 prompts of
16 tokens, 32 greedy tokens each, one random text of N tokens — timed from the outside
(wall, the kernel's peak RSS of the child). ``--before DIR`` runs the child against the
forge source tree in DIR (e.g. ``git worktree add /tmp/forge-before <commit>``), so old
and new code are measured by the same harness on the same machine; that tree converts and
builds its own engine from the same HF model first (its converter's metadata may not be
today's), once, in a process of its own, under engine-before-<commit>/.

Each run records per-phase wall and CPU seconds (CPU seconds still compare on a shared,
loaded machine); ``--layers`` makes a shallower model of the same width and vocabulary for
profiling. Results go to bench/results/verify_memory.json and into docs/bench.md (between markers).
This is CPU-heavy for minutes: run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import lib
from bench.lib import ROOT

DATA = lib.DATA / "verify-0.5b"
RESULTS = lib.RESULTS / "verify_memory.json"
DOC = lib.DOCS / "bench.md"
START, END = "<!-- verify-memory:start -->", "<!-- verify-memory:end -->"
# Same-harness rounds of the checked reference greedy vs the commit before it (--results
# bench/results/verify_memory_checked-N.json --before <that commit's tree>), in the doc too.
CHECKED = "verify_memory_checked"
CODES = {"before": "before (a0dc3c3^)", "after": "after (checked greedy)"}
SHAPE = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
LIMITS = {"max_batch_size": 8, "max_input_len": 512, "max_seq_len": 2048}
PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 8, 16, 32


def _data(layers: int) -> Path:
    return (
        DATA if layers == SHAPE["num_hidden_layers"] else DATA.with_name(f"{DATA.name}-{layers}l")
    )


def prepare_apart(layers: int) -> tuple[Path, Path, int]:
    """prepare(), in a process of its own when something is to be made: a harness that
    held the 2 GB model would lend its memory to every measured child's ru_maxrss
    (bench/measure.py's _child_peak)."""
    data = _data(layers)
    if not (data / "engine" / "engine.json").is_file():
        import subprocess

        argv = [sys.executable, "-m", "bench.verify_memory", "--prepare", str(layers)]
        subprocess.run(argv, cwd=ROOT, check=True)
    return prepare(layers)


def prepare(layers: int = SHAPE["num_hidden_layers"]) -> tuple[Path, Path, int]:
    """(HF dir, engine dir, float32 checkpoint bytes), made once and reused. ``layers``
    below 24 makes a shallower model of the same width and vocabulary (for profiling: the
    per-token logits work is the same, the transformer work smaller)."""
    data = _data(layers)
    hf, engine = data / "hf", data / "engine"
    if not (hf / "config.json").is_file():
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        shape = {**SHAPE, "num_hidden_layers": layers}
        model = Qwen2ForCausalLM(Qwen2Config(**shape, torch_dtype="float32"))
        model.save_pretrained(hf)
        del model
    if not (engine / "engine.json").is_file():
        from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
        from trtllm_forge.engine.backends import BuildOptions, build_engine

        checkpoint = data / "checkpoint"
        if not (checkpoint / "config.json").is_file():
            convert_hf_checkpoint(hf, checkpoint, dtype="float32")
        build_engine("onnxruntime", checkpoint, engine, BuildOptions(**LIMITS))
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    return hf, engine, size


def prepare_before(hf: Path, source: Path) -> Path:
    """The engine the forge tree at ``source`` builds from ``hf`` (same dtype and limits),
    made once by a process of its own (not in any measured time) and reused."""
    import subprocess

    commit = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip() or source.name  # fmt: skip
    data = hf.parent / f"engine-before-{commit}"
    if not (data / "engine" / "engine.json").is_file():
        argv = [sys.executable, "-m", "bench.verify_memory", "--build", str(source), str(hf)]
        subprocess.run([*argv, str(data)], cwd=ROOT, check=True)
    return data / "engine"


def import_forge_from(source: Path) -> None:
    """Make ``import trtllm_forge`` load the tree at ``source``. Only trtllm_forge: an old
    tree's own bench/ package must not shadow this harness (which is imported already)."""
    if "trtllm_forge" in sys.modules:
        raise RuntimeError(f"trtllm_forge was imported before {source} was put first")
    sys.path.insert(0, str(source))


def build(source: Path, hf: Path, data: Path) -> None:
    """Convert and build ``hf`` as prepare() does, with the forge code at ``source``."""
    import_forge_from(source)
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.engine.backends import BuildOptions, build_engine

    checkpoint = data / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        convert_hf_checkpoint(hf, checkpoint, dtype="float32")
    build_engine("onnxruntime", checkpoint, data / "engine", BuildOptions(**LIMITS))


class PhaseTimes:
    """A Progress that records how long each verify task took: wall seconds, and the
    process's CPU seconds (what a shared, loaded machine still measures fairly)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        t0, c0 = time.perf_counter(), time.process_time()

        class _Task:
            def advance(self, amount: float = 1.0) -> None:
                pass

        yield _Task()
        self.seconds[description] = round(time.perf_counter() - t0, 2)
        self.cpu_seconds[description] = round(time.process_time() - c0, 2)


def child(engine: Path, hf: Path, tokens: int, source: Path) -> None:
    """One verify run with the forge code at ``source``; prints its metrics, phase times
    and the trtllm_forge it loaded as JSON on stdout."""
    import_forge_from(source)
    import tempfile

    import numpy as np

    import trtllm_forge
    from trtllm_forge.engine.verify import verify_engine

    rng = np.random.default_rng(0)
    vocab = SHAPE["vocab_size"]
    prompts = rng.integers(3, vocab, size=(PROMPTS, PROMPT_TOKENS)).tolist()
    text = rng.integers(3, vocab, size=tokens).tolist()
    phases = PhaseTimes()
    with tempfile.TemporaryDirectory() as out:
        result = verify_engine(
            engine, hf, prompts_token_ids=prompts, texts_token_ids=[text],
            max_new_tokens=NEW_TOKENS, gates={}, out_dir=Path(out), progress=phases,
        )  # fmt: skip
    doc = {
        "metrics": result.metrics,
        "phases": phases.seconds,
        "phases_cpu": phases.cpu_seconds,
        "forge": trtllm_forge.__file__,
    }
    print(json.dumps(doc))  # noqa: T201


def measure(engine: Path, hf: Path, tokens: int, source: Path) -> dict[str, Any]:
    from bench.measure import run

    argv = [sys.executable, "-m", "bench.verify_memory", "--child", str(engine), str(hf)]
    # cwd = this tree (`python -m` puts it first on sys.path): bench is always this harness,
    # the child puts ``source`` first for trtllm_forge alone.
    result = run([*argv, str(tokens), str(source)], cwd=ROOT)
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    if not Path(doc["forge"]).resolve().is_relative_to(source.resolve()):
        raise RuntimeError(f"the child loaded {doc['forge']}, not the tree at {source}")
    return {
        "tokens": tokens,
        "wall_s": round(result.seconds, 1),
        "cpu_s": round(result.cpu_seconds, 1),
        "peak_rss_bytes": result.max_rss_bytes,
        "peak_anon_bytes": result.peak_anon_bytes,
        "phases_s": doc["phases"],
        "phases_cpu_s": doc.get("phases_cpu", {}),
        "metrics": doc["metrics"],
    }


def model_flops(tokens: int) -> dict[str, float]:
    """FLOPs one verify run must do at the 0.5B shape (2 per multiply-add): both models'
    teacher-forced rows (the text and the prompts), causal attention over them, and both
    models' greedy steps; the input embedding is a lookup, not a product."""
    h, v, layers = SHAPE["hidden_size"], SHAPE["vocab_size"], SHAPE["num_hidden_layers"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * SHAPE["intermediate_size"]
    per_token = 2 * (layers * per_layer + h * v)
    scored = tokens + PROMPTS * PROMPT_TOKENS
    window = LIMITS["max_seq_len"]
    full, rest = divmod(tokens, window)
    pairs = full * window * (window + 1) // 2 + rest * (rest + 1) // 2  # query-key pairs
    attention = 2 * 2 * h * layers * (pairs + PROMPTS * PROMPT_TOKENS * (PROMPT_TOKENS + 1) // 2)
    greedy = PROMPTS * (PROMPT_TOKENS + NEW_TOKENS - 1) * per_token
    return {
        "teacher_forced": 2 * scored * per_token,
        "attention": 2 * attention,
        "greedy": 2 * greedy,
    }


def matmul_rate(threads: int, rows: int = 512, repeats: int = 3) -> dict[str, float]:
    """float32 GEMM throughput of this machine on the model's own shapes (one layer's
    projections and the lm_head, ``rows`` tokens at once): GFLOP per wall second and per
    CPU second (the latter holds on a loaded machine; times the cores, a ceiling)."""
    import torch

    torch.set_num_threads(threads)
    h, v = SHAPE["hidden_size"], SHAPE["vocab_size"]
    shapes = [(h, h), (h, 4864), (4864, h), (h, v)]
    weights = [torch.randn(n, k) for k, n in shapes]
    inputs = [torch.randn(rows, k) for k, _ in shapes]
    flops = repeats * sum(2 * rows * k * n for k, n in shapes)
    for x, w in zip(inputs, weights, strict=True):
        torch.nn.functional.linear(x, w)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for x, w in zip(inputs, weights, strict=True):
            torch.nn.functional.linear(x, w)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"threads": threads, "gflops_wall": flops / wall / 1e9, "gflops_cpu": flops / cpu / 1e9}


def floor(tokens: int) -> dict[str, Any]:
    """The arithmetic floor of verify's wall time on this machine's 2 cores."""
    from bench.measure import machine

    needed = model_flops(tokens)
    rates = [matmul_rate(n) for n in (1, 2)]
    best = max(rates[1]["gflops_wall"], 2 * rates[0]["gflops_cpu"]) * 1e9
    info = machine()
    return {
        "tokens": tokens,
        "tflop": {k: round(v / 1e12, 3) for k, v in needed.items()},
        "rates": [{k: round(v, 1) for k, v in r.items()} for r in rates],
        "floor_s": round(sum(needed.values()) / best, 1),
        "machine": f"{info['cpu']}, {info['cores']} cores, load {info['load average at start']}",
    }


def record_floor(path: Path, tokens: int) -> None:
    """Measure the floor, keep it in the results at ``path`` (and the doc, for the default)."""
    results = json.loads(path.read_text())
    results["floor"] = floor(tokens)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if path == RESULTS:
        write_doc(results)
    print(render_floor(results["floor"]), file=sys.stderr)  # noqa: T201


def render_floor(result: dict[str, Any]) -> str:
    tflop = result["tflop"]
    one, two = result["rates"]
    return (
        f"Arithmetic floor at {result['tokens']:,} tokens (`python -m bench.verify_memory "
        f"--floor`, {result['machine']}): {sum(tflop.values()):.2f} TFLOP — teacher-forced rows "
        f"of both models {tflop['teacher_forced']}, causal attention {tflop['attention']}, "
        f"greedy steps {tflop['greedy']}. float32 GEMMs of the model's shapes (512 rows) ran "
        f"at {one['gflops_cpu']} GFLOP per CPU second on one thread and {two['gflops_wall']} "
        f"GFLOP/s wall on two; at the better of 2 × {one['gflops_cpu']} and "
        f"{two['gflops_wall']}, the arithmetic alone takes {result['floor_s']} s on 2 cores, "
        "before loading either model, spilling the reference's logits or computing the metrics."
    )


def render(results: dict[str, Any]) -> str:
    gib = 2**30
    size = results["checkpoint_float32_bytes"]
    lines = [
        f"Synthetic Qwen2-0.5B shape (494M parameters, float32 checkpoint {size / gib:.2f} GiB, "
        f"float32 engine, window {LIMITS['max_seq_len']}), {PROMPTS} prompts × {NEW_TOKENS} "
        f"greedy tokens and one text; `python -m bench.verify_memory` on {results['machine']}, "
        f"{results['date']}.",
        "",
        "| code | text tokens | wall (s) | peak RSS (GiB) | peak RSS / checkpoint | phases (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["runs"]:
        phases = ", ".join(f"{k.removeprefix('verify: ')} {v}" for k, v in row["phases_s"].items())
        lines.append(
            f"| {row['code']} | {row['tokens']:,} | {row['wall_s']} | "
            f"{row['peak_rss_bytes'] / gib:.2f} | {row['peak_rss_bytes'] / size:.2f}× | {phases} |"
        )
    for note in results.get("notes", []):
        lines += ["", note]
    if "floor" in results:
        lines += ["", render_floor(results["floor"])]
    for path in sorted(lib.RESULTS.glob(f"{CHECKED}-*.json")):
        lines += ["", render_checked(json.loads(path.read_text()), path)]
    return "\n".join(lines)


def render_checked(results: dict[str, Any], path: Path) -> str:
    """One same-harness round of the checked reference greedy (``before``: the commit
    before it, ``after``: this code), with CPU seconds and the ratio of wall times."""
    gib = 2**30
    lines = [
        f"`{path.relative_to(ROOT)}` ({results['machine']}, {results['date']}):",
        "",
        "| code | text tokens | wall (s) | CPU (s) | peak RSS (GiB) | phases, wall (CPU) s |",
        "|---|---|---|---|---|---|",
    ]
    walls: dict[tuple[str, int], float] = {}
    for row in results["runs"]:
        cpu = row.get("phases_cpu_s", {})
        phases = ", ".join(
            f"{k.removeprefix('verify: ')} {v} ({cpu.get(k, '?')})"
            for k, v in row["phases_s"].items()
        )
        walls[row["code"], row["tokens"]] = row["wall_s"]
        lines.append(
            f"| {CODES.get(row['code'], row['code'])} | {row['tokens']:,} | {row['wall_s']} | "
            f"{row['cpu_s']} | {row['peak_rss_bytes'] / gib:.2f} | {phases} |"
        )
    for code, tokens in sorted(walls):
        if code == "after" and ("before", tokens) in walls:
            ratio = walls[code, tokens] / walls["before", tokens]
            lines += ["", f"Wall time after / before at {tokens:,} tokens: {ratio:.2f}."]
    return "\n".join(lines)


def write_doc(results: dict[str, Any]) -> None:
    lib.write_section(DOC, START, END, render(results) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--before", type=Path, help="a forge source tree holding the old code")
    parser.add_argument(
        "--child", nargs=4, metavar=("ENGINE", "HF", "TOKENS", "SOURCE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--build", nargs=3, metavar=("SOURCE", "HF", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=int, metavar="LAYERS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--layers",
        type=int,
        default=SHAPE["num_hidden_layers"],
        help="a shallower model for profiling (results then go to --results only, never the doc)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure GEMM throughput and record the arithmetic floor at the first --tokens",
    )
    parser.add_argument("--doc-only", action="store_true", help="re-render docs/bench.md only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results JSON to update")
    parser.add_argument(
        "--label", default="", help="a note on the machine (e.g. 'quiet, 2 threads')"
    )
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]), Path(args.child[3]))
        return 0
    if args.build:
        build(*map(Path, args.build))
        return 0
    if args.prepare:
        prepare(args.prepare)
        return 0
    if args.doc_only:
        write_doc(json.loads(RESULTS.read_text()))
        return 0
    if args.floor:
        record_floor(args.results, args.tokens[0])
        return 0
    from bench.measure import machine

    hf, engine, size = prepare_apart(args.layers)
    if args.before:
        engine = prepare_before(hf, args.before)
    previous = json.loads(args.results.read_text()) if args.results.is_file() else {"runs": []}
    code = "before" if args.before else "after"
    runs = [r for r in previous["runs"] if not (r["code"] == code and r["tokens"] in args.tokens)]
    for tokens in args.tokens:
        row = measure(engine, hf, tokens, args.before or ROOT)
        runs.append({"code": code, **row})
        print(
            f"{code} {tokens}: {row['wall_s']} s, {row['peak_rss_bytes'] / 2**30:.2f} GiB",
            file=sys.stderr,
        )  # noqa: T201
    info = machine()
    results = {
        "checkpoint_float32_bytes": size,
        "machine": f"{args.label + ': ' if args.label else ''}{info['cpu']}, {info['cores']} cores, {info['ram']}, load {info['load average at start']}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": sorted(runs, key=lambda r: (r["code"] != "before", r["tokens"])),
        "notes": previous.get("notes", []),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    if args.results == RESULTS and args.layers == SHAPE["num_hidden_layers"]:
        write_doc(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
