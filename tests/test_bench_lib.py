"""The bench library on real runners: a tiny forge engine (ONNX Runtime) and the transformers
reference it was built from. Figures are checked for consistency, never for speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine_support import OPTIONS, TinyBuild, random_prompts, tiny_engine
from trtllm_forge.bench import (
    BenchReport,
    Request,
    Scenario,
    Workload,
    load_dataset,
    open_runner,
    run_bench,
    synthetic_workload,
)
from trtllm_forge.bench.plot import write_plot
from trtllm_forge.errors import ExitCode, ForgeError


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    return tiny_engine(tmp_path_factory.mktemp("bench"), "llama")


def assert_consistent(report: BenchReport) -> None:
    """What any honest report satisfies, whatever the machine's speed."""
    for s in report.scenarios:
        assert s.output_tokens == sum(t.output_tokens for t in s.timings)
        assert s.output_tokens_per_s * s.duration_s == pytest.approx(s.output_tokens)
        assert s.requests_per_s * s.duration_s == pytest.approx(s.requests)
        assert s.requests == len(s.timings) and s.batches == -(-s.requests // s.batch_size)
        for stats in (s.ttft_ms, s.tpot_ms, s.itl_ms, s.e2e_ms):
            assert stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
            assert stats.min <= stats.mean <= stats.max
        assert all(0 < t.ttft_ms <= t.e2e_ms for t in s.timings)
        assert s.e2e_ms.max <= s.duration_s * 1000
        # Every inter-token gap is counted once: output tokens - 1 per request.
        assert s.itl_ms.count == s.output_tokens - s.requests
        assert s.peak_rss_bytes > 0 and s.peak_device_bytes is None


def test_forge_engine_report_is_consistent_and_round_trips(
    build: TinyBuild, tmp_path: Path
) -> None:
    runner = open_runner("forge", build.engine)
    workload = synthetic_workload(
        batch_sizes=[1, 4], input_lens=[8], output_lens=[6], vocab_size=runner.vocab_size
    )
    report = run_bench(runner, workload, warmup=1)
    assert [s.name for s in report.scenarios] == ["bs1 isl8 osl6", "bs4 isl8 osl6"]
    assert [s.requests for s in report.scenarios] == [2, 8]  # two batches per scenario
    assert report.runtime == "forge" and report.versions["onnxruntime"]
    assert_consistent(report)
    again = BenchReport.model_validate_json(report.model_dump_json())
    assert again == report and again.schema_version == 1
    png = write_plot(report, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runners_stream_the_same_greedy_tokens(build: TinyBuild) -> None:
    """forge and transformers decode the same batch (left padded, mixed lengths) alike, and
    the engine's stream is what its generate() returns."""
    prompts = random_prompts(3)
    forge = open_runner("forge", build.engine)
    reference = open_runner("transformers", build.hf)
    forge_steps = list(forge.stream(prompts, 5))
    assert len(forge_steps) == 5 and all(len(step) == 3 for step in forge_steps)
    assert list(reference.stream(prompts, 5)) == forge_steps
    by_prompt = [list(column) for column in zip(*forge_steps, strict=True)]
    assert by_prompt == forge.engine.generate(prompts, 5)  # type: ignore[attr-defined]


def test_dataset_requests_with_uneven_lengths(build: TinyBuild, tmp_path: Path) -> None:
    lines = [
        {"task_id": 1, "input_ids": [5, 6, 7], "output_tokens": 4},
        {"task_id": "b", "input_ids": [9] * 10, "output_tokens": 1},
        {"task_id": 3, "input_ids": [11, 12], "output_tokens": 7},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    workload = load_dataset(path, batch_sizes=[2])
    report = run_bench(open_runner("transformers", build.hf), workload, warmup=0)
    (scenario,) = report.scenarios
    assert [t.output_tokens for t in scenario.timings] == [4, 1, 7]
    assert scenario.batches == 2 and scenario.input_tokens == 15
    assert scenario.tpot_ms.count == 2  # the one-token request has no time per output token
    assert_consistent(report)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"task_id": 1, "output_tokens": 3}', "exactly one of prompt and input_ids"),
        ('{"task_id": 1, "input_ids": [], "output_tokens": 3}', "non-empty list"),
        ('{"task_id": 1, "input_ids": [1], "output_tokens": 0}', "output_tokens must be"),
        ('{"task_id": 1, "input_ids": [1], "output_tokens": 3, "x": 1}', "unknown key(s) x"),
        ('{"task_id": 1, "prompt": "hi", "output_tokens": 3}', "needs a tokenizer"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_a_malformed_dataset_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"task_id": 0, "input_ids": [4, 5], "output_tokens": 2}\n\n' + line + "\n")
    with pytest.raises(ForgeError, match="dataset line") as err:
        load_dataset(path, batch_sizes=[1])
    assert err.value.code == ExitCode.RECIPE
    assert f"{path}:3:" in err.value.message and message in err.value.message


def test_workloads_beyond_the_engine_limits_fail_before_running(build: TinyBuild) -> None:
    runner = open_runner("forge", build.engine)
    vocab = runner.vocab_size
    too_wide = synthetic_workload(
        batch_sizes=[OPTIONS.max_batch_size + 1], input_lens=[4], output_lens=[2], vocab_size=vocab
    )
    with pytest.raises(
        ForgeError, match="batch size 9 is larger than the engine's max_batch_size 8"
    ):
        run_bench(runner, too_wide)
    too_long = Workload(
        "dataset", (Scenario("long", 1, (Request("x", (5,) * 65, 2),)),), source="inline"
    )
    with pytest.raises(ForgeError, match="64") as err:
        run_bench(runner, too_long)
    assert "longer than max_input_len" in err.value.message and err.value.code == ExitCode.RECIPE
    with pytest.raises(ForgeError, match="not a forge engine directory"):
        open_runner("forge", build.hf)


def genai_folder(build: TinyBuild, folder: Path) -> Path:
    """An onnxruntime-genai model folder around the tiny engine's rank-0 graph: a genai_config
    written for this test (the graph uses genai's default input/output names)."""
    import shutil

    meta = json.loads((build.engine / "engine.json").read_text())["model"]
    folder.mkdir()
    for file in (build.engine / "rank0").iterdir():
        shutil.copy(file, folder / file.name)
    names = {
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                   "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }  # fmt: skip
    decoder = {
        "filename": "model.onnx",
        "session_options": {"log_id": "forge-test", "provider_options": []},
        "head_size": meta["head_size"],
        "hidden_size": meta["hidden_size"],
        "num_attention_heads": meta["num_heads"],
        "num_key_value_heads": meta["num_kv_heads"],
        "num_hidden_layers": meta["num_layers"],
        **names,
    }
    config = {
        "model": {"type": "llama", "vocab_size": meta["vocab_size"], "context_length": 128,
                  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "decoder": decoder},
        "search": {"do_sample": False, "max_length": 128, "num_beams": 1,
                   "past_present_share_buffer": False},
    }  # fmt: skip
    (folder / "genai_config.json").write_text(json.dumps(config))
    return folder


def test_genai_runner_times_an_onnxruntime_genai_folder(build: TinyBuild, tmp_path: Path) -> None:
    genai = open_runner("genai", genai_folder(build, tmp_path / "genai"))
    forge = open_runner("forge", build.engine)
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22, 23, 24]]  # equal lengths: no padding involved
    assert list(genai.stream(prompts, 6)) == list(forge.stream(prompts, 6))
    workload = synthetic_workload(
        batch_sizes=[1, 2], input_lens=[8], output_lens=[5], vocab_size=genai.vocab_size
    )
    report = run_bench(genai, workload, warmup=1)
    assert report.runtime == "genai" and report.versions["onnxruntime-genai"]
    assert_consistent(report)
    with pytest.raises(ForgeError, match="not an onnxruntime-genai model folder"):
        open_runner("genai", build.engine)
