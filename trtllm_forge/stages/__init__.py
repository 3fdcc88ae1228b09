"""One module per stage; each exposes ``STAGE`` implementing pipeline.stage.Stage.

The api hands ``pipeline_stages()`` to the runner, which knows no stage of its own."""

from __future__ import annotations

from trtllm_forge.pipeline.stage import Stage


def pipeline_stages() -> tuple[Stage, ...]:
    """The five stages in the order they run (the one place that order is written)."""
    from trtllm_forge.stages import build, calibrate, convert, fetch, verify

    return (fetch.STAGE, convert.STAGE, calibrate.STAGE, build.STAGE, verify.STAGE)


def stage_names() -> tuple[str, ...]:
    return tuple(stage.name for stage in pipeline_stages())
