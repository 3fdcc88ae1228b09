"""gguf_to_hf on a tiny GGUF written here with the `gguf` package, and on the real SmolLM2.

The tiny GGUF is made the way llama.cpp's converter makes one from an HF Llama:
tensor names mapped to GGUF's, q/k rows re-ordered for GGML's interleaved
rotary layout, the byte-level BPE vocabulary and merges stored as metadata,
and one tensor stored block-quantized (Q8_0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.tinymodels import make_tiny_hf
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.sources import gguf_snapshot, gguf_to_hf

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = ROOT / "bench" / ".data" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ENWIKI = ROOT / "bench" / ".data" / "enwiki-eval.txt"

GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
QUANTIZED = "ffn_up.weight"  # stored as Q8_0; every other tensor as F32


def interleave_rotary_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF keeps each head's rotary pairs as (first half, second half); GGML interleaves them."""
    head_rows = weight.shape[0] // heads
    split = weight.reshape(heads, 2, head_rows // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def write_tiny_gguf(hf_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """Write ``hf_dir`` as a llama GGUF; return the HF tensors a perfect reader must give back."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())["model"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("forge tiny llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    tokens = sorted(tokenizer["vocab"], key=tokenizer["vocab"].get)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    writer.add_token_merges([" ".join(pair) for pair in tokenizer["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)

    expected: dict[str, np.ndarray] = {}
    for hf_name, tensor in load_file(str(hf_dir / "model.safetensors")).items():
        name = gguf_name(hf_name)
        stored = tensor
        if name.endswith("attn_q.weight"):
            stored = interleave_rotary_halves(tensor, heads)
        elif name.endswith("attn_k.weight"):
            stored = interleave_rotary_halves(tensor, kv_heads)
        if name.endswith(QUANTIZED):
            blocks = gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            expected[hf_name] = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(stored))
            expected[hf_name] = tensor
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("gguf")
    hf_dir = make_tiny_hf("llama", root / "hf", with_tokenizer=True)
    expected = write_tiny_gguf(hf_dir, root / "tiny.gguf")
    return hf_dir, root / "tiny.gguf", expected


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path, dict[str, np.ndarray]]
) -> Path:
    out = tmp_path_factory.mktemp("converted") / "hf"
    gguf_to_hf(tiny[1], out)
    return out


def test_weights_come_back_exactly(
    converted: Path, tiny: tuple[Path, Path, dict[str, np.ndarray]]
) -> None:
    from safetensors.numpy import load_file

    got = load_file(str(converted / "model.safetensors"))
    expected = tiny[2]
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], tensor, err_msg=name)


def test_config_matches_source_model(converted: Path, tiny: tuple[Path, Path, Any]) -> None:
    source = json.loads((tiny[0] / "config.json").read_text())
    got = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in got
    assert got["architectures"] == ["LlamaForCausalLM"] and got["dtype"] == "float32"
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "tie_word_embeddings",
        "head_dim",
    ):
        assert got[key] == source[key], key
    assert got["rms_norm_eps"] == pytest.approx(source["rms_norm_eps"])
    assert got["rope_parameters"]["rope_theta"] == source["rope_parameters"]["rope_theta"]


def test_model_and_tokenizer_load_and_agree(converted: Path, tiny: tuple[Path, Path, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "Hello world! The quick brown fox jumps over the lazy dog."
    ids_src = AutoTokenizer.from_pretrained(tiny[0])(text)["input_ids"]
    ids_got = AutoTokenizer.from_pretrained(converted)(text)["input_ids"]
    assert ids_got == ids_src
    source = AutoModelForCausalLM.from_pretrained(tiny[0])
    with torch.no_grad():  # give the source the same Q8_0-rounded up-projections
        for name, tensor in tiny[2].items():
            source.get_parameter(name).copy_(torch.from_numpy(tensor))
    model = AutoModelForCausalLM.from_pretrained(converted)
    ids = torch.tensor([ids_src])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source(ids).logits, rtol=1e-5, atol=1e-5)


def test_tied_embeddings(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    hf_dir = make_tiny_hf("llama", tmp_path / "hf", with_tokenizer=True, tie_word_embeddings=True)
    write_tiny_gguf(hf_dir, tmp_path / "tied.gguf")
    gguf_to_hf(tmp_path / "tied.gguf", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert "lm_head.weight" not in got
    np.testing.assert_array_equal(
        got["model.embed_tokens.weight"],
        load_file(str(hf_dir / "model.safetensors"))["model.embed_tokens.weight"],
    )


def test_bfloat16_output(tmp_path: Path, tiny: tuple[Path, Path, Any]) -> None:
    from safetensors import safe_open

    gguf_to_hf(tiny[1], tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


class RecordingProgress:
    def __init__(self) -> None:
        self.logs: list[str] = []
        self.tasks: dict[str, tuple[float | None, float]] = {}

    def log(self, message: str) -> None:
        self.logs.append(message)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        progress = self

        class Handle:
            def advance(self, amount: float = 1.0) -> None:
                done = progress.tasks[description][1]
                progress.tasks[description] = (total, done + amount)

        self.tasks[description] = (total, 0.0)
        yield Handle()


def test_progress_is_reported_and_nothing_printed(
    tmp_path: Path, tiny: tuple[Path, Path, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    import gguf

    progress = RecordingProgress()
    capfd.readouterr()
    gguf_to_hf(tiny[1], tmp_path / "out", progress=progress)
    captured = capfd.readouterr()
    assert captured.out == "" and "Writing model shards" not in captured.err
    assert "Converting and de-quantizing" not in captured.err
    n_tensors = len(gguf.GGUFReader(str(tiny[1])).tensors)
    assert progress.tasks["dequantizing GGUF tensors"] == (n_tensors, n_tensors)
    assert any("saving LlamaForCausalLM" in m for m in progress.logs)


def test_snapshot_of_converted_folder(converted: Path) -> None:
    snap = gguf_snapshot(converted)
    assert snap.kind == "gguf" and snap.commit is None
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(snap.files)


def test_errors(tmp_path: Path, tiny: tuple[Path, Path, Any]) -> None:
    cases = [
        (tmp_path / "absent.gguf", {}, ExitCode.SOURCE, "does not exist"),
        (tiny[0] / "config.json", {}, ExitCode.SOURCE, "not a GGUF file"),
        (tiny[1], {"dtype": "int8"}, ExitCode.RECIPE, "unknown dtype"),
    ]
    for path, kwargs, code, words in cases:
        with pytest.raises(ForgeError) as info:
            gguf_to_hf(path, tmp_path / "out", **kwargs)
        assert info.value.code == code and words in info.value.message


@pytest.mark.slow
def test_real_smollm2_converts_and_predicts_wikipedia(tmp_path: Path) -> None:
    """The real SmolLM2-135M GGUF (Q4_1) becomes an HF model with sane perplexity."""
    if not SMOLLM2_GGUF.is_file() or not ENWIKI.is_file():
        pytest.skip("real data absent: run `python -m bench.data` first")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_to_hf(SMOLLM2_GGUF, tmp_path / "smollm2")
    config = json.loads((tmp_path / "smollm2" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (
        30,
        576,
        3,
    )
    assert config["tie_word_embeddings"] is True
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2")
    ids = tokenizer(ENWIKI.read_text(encoding="utf-8")[:20000], return_tensors="pt")["input_ids"][
        :, :512
    ]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert float(np.exp(loss)) < 40.0  # ~20 when weights and tokenizer are right; >1000 when not
