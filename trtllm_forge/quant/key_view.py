"""The quantize section as stage keys hold it, apart from quant/params.py: every no-op
`forge build` keys the calibrate stage, and params.py builds a pydantic model per
method when imported (docs/performance.md)."""

from __future__ import annotations

from typing import Any


def key_view(params: dict[str, Any]) -> dict[str, Any]:
    """Dumped parameters as the calibrate key holds them: an option added later is left
    out at its default (``quantize_lm_head: false``), so keys made before it stay valid."""
    if params.get("quantize_lm_head") is False:
        return {k: v for k, v in params.items() if k != "quantize_lm_head"}
    return params
