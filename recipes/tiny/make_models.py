"""Write the tiny random-weight models the tiny recipes build from.

    python recipes/tiny/make_models.py        # -> recipes/tiny/{llama,mistral,qwen2,...}/

They are real transformers checkpoints (seeded, so every machine gets the same
bytes) small enough for a whole forge build to run in seconds on a CPU. They
prove plumbing and numerics, not model quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.tinymodels import RECIPE_ARCHES, make_tiny_hf  # noqa: E402


def main() -> None:
    for arch in RECIPE_ARCHES:
        out = HERE / arch
        if (out / "config.json").exists():
            print(f"{out} exists")
            continue
        make_tiny_hf(arch, out, with_tokenizer=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
