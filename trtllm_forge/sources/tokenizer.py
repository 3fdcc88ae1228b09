"""The model's own tokenizer, loaded safely: never with remote code, and a tokenizer
that cannot be loaded (files from anyone: tokenizers raises KeyError, ValueError, …)
is a source error naming what needed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.errors import source_error


def load_tokenizer(tokenizer_dir: Path, *, needed_for: str) -> Any:
    """``AutoTokenizer`` of ``tokenizer_dir``; ``needed_for`` completes the hint
    ("calibration tokenizes text", "verify tokenizes the prompts", …)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise source_error(
            f"cannot load the model's tokenizer from {tokenizer_dir}: "
            f"{type(exc).__name__}: {first_line}",
            hint=f"{needed_for} with the model's own tokenizer: the source must include a "
            "loadable one (tokenizer.json or tokenizer.model)",
        ) from None
