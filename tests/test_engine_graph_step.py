"""The ort profile's fixed-buffer decode step (engine/graph_step.py: what a CUDA graph
replays) and its pooled caches, on ONNX Runtime's CPU provider: a static mask as wide as
the cache must give the tokens of the growing mask, and a cache reused by the next batch
(stale slots from a longer sequence included) must give the tokens of a fresh one.
tests/test_gpu.py runs the captured graph on CUDA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.engine_support import OPTIONS, tiny_engine
from trtllm_forge.engine.runtime import OrtEngine

PROMPTS = [[5, 17, 33, 2, 9, 41, 7], [99, 120], [7, 8, 9, 10]]


@pytest.fixture(scope="module", params=["float32", "float16"])
def ort_engine(request, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    options = replace(OPTIONS, profile="ort", compute_dtype=request.param)
    return tiny_engine(tmp_path_factory.mktemp(request.param), "llama", options=options).engine


def test_static_mask_step_gives_the_growing_mask_tokens(ort_engine: Path) -> None:
    growing = OrtEngine.load(ort_engine, threads=1)
    fixed = OrtEngine.load(ort_engine, threads=1, cuda_graph=True)
    assert fixed.bound is not None and fixed.bound.graphs
    assert growing.bound is not None and not growing.bound.graphs
    want = growing.generate(PROMPTS, 24)
    assert fixed.generate(PROMPTS, 24) == want
    assert len({tuple(row) for row in want}) == len(PROMPTS)  # the rows really differ


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["growing", "fixed"])
def test_reused_cache_gives_a_fresh_caches_tokens(ort_engine: Path, cuda_graph: bool) -> None:
    engine = OrtEngine.load(ort_engine, threads=1, cuda_graph=cuda_graph)
    long_prompts = [[3 + i for i in range(40)], [50 + i for i in range(33)], [4] * 20]
    engine.generate(long_prompts, 60)  # fills far more slots than the next batch uses
    stopped = engine.stream(PROMPTS, 30)
    next(stopped), next(stopped)
    stopped.close()  # released mid-sequence
    reused = engine.generate(PROMPTS, 24)
    fresh = OrtEngine.load(ort_engine, threads=1).generate(PROMPTS, 24)
    assert reused == fresh
    batch_one = engine.generate(PROMPTS[:1], 24)  # another batch size: its own cache
    assert batch_one == [fresh[0]]
