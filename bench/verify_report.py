"""Build and verify the SmolLM2-135M recipe (float32 and float16 weights) and publish
the verify reports to docs/verify-smollm2-135m.md.

    python -m bench.verify_report      # needs `make data`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.lib import DOCS, ROOT

RECIPE = ROOT / "recipes" / "smollm2-135m.yaml"
DOC = DOCS / "verify-smollm2-135m.md"


def build(dtype: str, home: Path, workdir: Path) -> tuple[dict, str]:  # type: ignore[type-arg]
    doc = yaml.safe_load(RECIPE.read_text())
    doc["convert"]["dtype"] = dtype
    doc["source"]["gguf"] = str((RECIPE.parent / doc["source"]["gguf"]).resolve())
    doc["verify"]["text_file"] = str((RECIPE.parent / doc["verify"]["text_file"]).resolve())
    if dtype != "float32":
        doc["verify"]["gates"] = {"min_top1": 0.99, "max_ppl_ratio": 1.005}
    recipe = workdir / f"smollm2-{dtype}.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {
        **os.environ,
        "FORGE_HOME": str(home),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "trtllm_forge", "build", str(recipe), "--json", "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    result = json.loads(run.stdout)
    verify_dir = Path(result["stages"][-1]["path"])
    return result, (verify_dir / "report.md").read_text()


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="forge-verify-"))
    parts = [
        "# Verify report: SmolLM2-135M on ONNX Runtime (CPU)\n",
        "Produced by `python -m bench.verify_report` (needs `make data`); the slow test tier "
        "(`make test-slow`) asserts the same gates.\n",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Recipe: `recipes/smollm2-135m.yaml` (GGUF Q4_1 source "
        "dequantized to float32 by transformers; held-out text: the gensim Wikipedia sample, first 512 tokens).\n",
    ]
    for dtype in ("float32", "float16"):
        result, report = build(dtype, home, home)
        status = "passed" if result.get("ok") else "FAILED"
        parts.append(f"\n## Weights stored as {dtype} ({status})\n")
        parts.append(report.split("\n", 1)[1])  # drop the report's own title
    DOC.write_text("\n".join(parts))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
