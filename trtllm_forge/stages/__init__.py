"""One module per stage; each exposes ``STAGE`` implementing pipeline.stage.Stage."""

from __future__ import annotations

from trtllm_forge.pipeline.stage import Stage


def all_stages() -> dict[str, Stage]:
    from trtllm_forge.stages import build, calibrate, convert, fetch, verify

    return {s.STAGE.name: s.STAGE for s in (fetch, convert, calibrate, build, verify)}
