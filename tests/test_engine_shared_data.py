"""An engine built from the store's shard references the shard's bytes instead of copying
them (trtllm_forge/engine/onnx/shared.py, issue 19): real lowerings, real ONNX Runtime
sessions, a real store built through the api."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.engine_support import OPTIONS, random_prompts, tiny_checkpoint
from tests.helpers import write_recipe
from tests.tinymodels import make_tiny_hf
from trtllm_forge.engine.backends import build_engine
from trtllm_forge.engine.onnx.shared import check_graph
from trtllm_forge.engine.runtime import OrtEngine


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _locations(model: Path) -> dict[str, list[tuple[int, int]]]:
    """Per external data file: the (offset, length) of every initializer stored there."""
    out: dict[str, list[tuple[int, int]]] = {}
    for tensor in onnx.load(str(model), load_external_data=False).graph.initializer:
        where = {e.key: e.value for e in tensor.external_data}
        if "location" in where:
            span = (int(where["offset"]), int(where["length"]))
            out.setdefault(where["location"], []).append(span)
    return out


def _scores(engine: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    runtime = OrtEngine.load(engine, threads=1)
    return [runtime.score(p) for p in prompts]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_read_only_checkpoint_is_referenced_and_logits_are_bit_identical(
    tmp_path: Path, dtype: str
) -> None:
    _, ckpt = tiny_checkpoint(tmp_path, "llama", dtype=dtype)
    plain = build_engine("onnxruntime", ckpt, tmp_path / "plain", OPTIONS)
    store_like = tmp_path / "read-only"
    shutil.copytree(ckpt, store_like)
    os.chmod(store_like / "rank0.safetensors", 0o444)  # as the store leaves its files
    shared = build_engine("onnxruntime", store_like, tmp_path / "shared", OPTIONS)

    rank_dir = tmp_path / "shared" / "rank0"
    link = rank_dir / "rank0.safetensors"
    assert _inode(link) == _inode(store_like / "rank0.safetensors")
    entry = shared["onnx"]["ranks"][0]
    assert entry["shared"]["file"] == "rank0.safetensors" and entry["shared"]["bytes"] > 0
    # Only what is not the shard's bytes as stored is written (the embedding table).
    before = plain["onnx"]["ranks"][0]["data_bytes"]
    assert entry["data_bytes"] + entry["shared"]["bytes"] <= before
    assert entry["data_bytes"] < before / 4
    # Every reference lies inside a tensor of the safetensors file's data section.
    header_len = int.from_bytes(link.read_bytes()[:8], "little")
    header = json.loads(link.read_bytes()[8 : 8 + header_len])
    starts = {8 + header_len + v["data_offsets"][0] for k, v in header.items() if k[:2] != "__"}
    spans = _locations(rank_dir / "model.onnx")
    assert spans["rank0.safetensors"] and {o for o, _ in spans["rank0.safetensors"]} <= starts
    prompts = random_prompts(3)
    plain_scores, shared_scores = (
        _scores(tmp_path / "plain", prompts),
        _scores(tmp_path / "shared", prompts),
    )
    for a, b in zip(plain_scores, shared_scores, strict=True):
        np.testing.assert_array_equal(a, b)  # the folded Transpose is the same matrix


def test_writable_checkpoint_is_copied_as_before(tmp_path: Path) -> None:
    """A link to a file someone may still write in place would change the engine."""
    _, ckpt = tiny_checkpoint(tmp_path, "llama")
    meta = build_engine("onnxruntime", ckpt, tmp_path / "engine", OPTIONS)
    rank_dir = tmp_path / "engine" / "rank0"
    assert meta["onnx"]["ranks"][0]["shared"] is None
    assert not (rank_dir / "rank0.safetensors").exists()
    assert set(_locations(rank_dir / "model.onnx")) == {"model.onnx.data"}


def test_a_file_the_graph_mostly_rewrites_is_not_linked(tmp_path: Path) -> None:
    """A quantized checkpoint's linears are rewritten by their lowering: the graph would
    reference little of the file, so the engine keeps its own copy of that little (an
    exported engine must not carry the whole checkpoint for it)."""
    from trtllm_forge.engine.onnx.hooks import LinearSite
    from trtllm_forge.engine.onnx.linear import LINEAR_LOWERINGS, register_linear_lowering

    _, ckpt = tiny_checkpoint(tmp_path, "llama")
    quantized = tmp_path / "rewritten"
    shutil.copytree(ckpt, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization"]["quant_algo"] = "FORGE_TEST_REWRITE"
    (quantized / "config.json").write_text(json.dumps(config))
    os.chmod(quantized / "rank0.safetensors", 0o444)

    def rewrite(ctx, site: LinearSite, x: str) -> str:  # type: ignore[no-untyped-def]
        weight = ctx.weights.get(f"{site.module}.weight")  # the bytes, copied as a quant would
        value = ctx.constant_weight(f"{site.module}.weight", weight, transpose=True)
        return ctx.graph.op("MatMul", [x, value], f"{site.module}.out")

    register_linear_lowering("FORGE_TEST_REWRITE", rewrite)
    try:
        meta = build_engine("onnxruntime", quantized, tmp_path / "engine", OPTIONS)
    finally:
        del LINEAR_LOWERINGS["FORGE_TEST_REWRITE"]
    rank_dir = tmp_path / "engine" / "rank0"
    assert meta["onnx"]["ranks"][0]["shared"] is None
    assert not (rank_dir / "rank0.safetensors").exists()
    assert set(_locations(rank_dir / "model.onnx")) == {"model.onnx.data"}
    build_engine("onnxruntime", ckpt, tmp_path / "plain", OPTIONS)
    prompts = random_prompts(2)
    got, want = _scores(tmp_path / "engine", prompts), _scores(tmp_path / "plain", prompts)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_check_graph_accepts_our_links_and_still_catches_a_short_file(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path, "llama")
    os.chmod(ckpt / "rank0.safetensors", 0o444)
    build_engine("onnxruntime", ckpt, tmp_path / "engine", OPTIONS)
    model = tmp_path / "engine" / "rank0" / "model.onnx"
    with pytest.raises(onnx.checker.ValidationError, match="hard links"):
        onnx.checker.check_model(str(model), full_check=True)  # why check_graph exists
    check_graph(model)
    data = model.parent / "model.onnx.data"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(onnx.checker.ValidationError, match="past its end"):
        check_graph(model)


def test_store_build_shares_the_shard_inode_and_exports_whole(tmp_path: Path) -> None:
    from trtllm_forge import api
    from trtllm_forge.exporters import materialize
    from trtllm_forge.store.store import Artifact, Store

    model = make_tiny_hf("llama", tmp_path / "hf", with_tokenizer=True)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        quantize={"method": "none"},
        build={
            "backend": "onnxruntime",
            "max_batch_size": 2,
            "max_input_len": 32,
            "max_seq_len": 64,
        },
        verify={"enabled": False},
    )
    engine = api.build(recipe=recipe, until="build").artifacts["build"].path
    home = Path(os.environ["FORGE_HOME"])
    shard = next((home / "artifacts" / "shard").iterdir())
    convert = next((home / "artifacts" / "convert").iterdir())
    link = engine / "engine" / "rank0" / "rank0.safetensors"
    assert (
        _inode(link) == _inode(shard / "rank0.safetensors") == _inode(convert / "rank0.safetensors")
    )
    # A fresh store finds every entry valid without re-reading any file: publishing
    # re-recorded the digest of the inode whose ctime the link moved.
    fresh = Store(home)
    entries = list(fresh.artifacts())
    assert entries and all(isinstance(e, Artifact) for e in entries)
    assert fresh.memo.misses == 0
    assert all(isinstance(e, Artifact) for e in Store(home).artifacts(deep=True))
    # Export: own bytes, one link each, and the folder runs on its own.
    dest = tmp_path / "export"
    materialize(engine, dest)
    assert (dest / "engine" / "rank0" / "rank0.safetensors").stat().st_nlink == 1
    prompts = random_prompts(2)
    want = _scores(engine / "engine", prompts)
    # The shard and convert entries gone, the engine still loads (it holds the inode).
    for entry in (shard, convert):
        fresh.remove(entry)
    assert isinstance(Store(home).lookup("build", f"blake3:{engine.name}"), Artifact)
    for got_store, got_export, w in zip(
        _scores(engine / "engine", prompts), _scores(dest / "engine", prompts), want, strict=True
    ):
        np.testing.assert_array_equal(got_store, w)
        np.testing.assert_array_equal(got_export, w)


def test_onnxruntime_genai_runs_a_shared_engine(tmp_path: Path) -> None:
    """onnxruntime-genai loads the folder as it is (its ORT session resolves the link
    like any external data file) and generates transformers' greedy tokens."""
    pytest.importorskip("onnxruntime_genai")
    from tests.test_engine_genai import PROMPTS, _genai_tokens, _transformers_tokens
    from trtllm_forge.engine.genai import write_genai_folder

    hf, ckpt = tiny_checkpoint(tmp_path, "qwen2", with_tokenizer=True, seed=3)
    os.chmod(ckpt / "rank0.safetensors", 0o444)
    engine = tmp_path / "engine"
    meta = build_engine("onnxruntime", ckpt, engine, OPTIONS)
    assert meta["onnx"]["ranks"][0]["shared"] is not None
    write_genai_folder(engine, meta, hf)
    for prompt in PROMPTS:
        assert _genai_tokens(engine, list(prompt)) == _transformers_tokens(hf, list(prompt))


def test_each_tp_rank_references_its_own_rank_file(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path, "llama", tp=2)
    build_engine("onnxruntime", ckpt, tmp_path / "plain", OPTIONS)
    store_like = tmp_path / "read-only"
    shutil.copytree(ckpt, store_like)
    for rank in range(2):
        os.chmod(store_like / f"rank{rank}.safetensors", 0o444)
    meta = build_engine("onnxruntime", store_like, tmp_path / "shared", OPTIONS)
    for rank in range(2):
        rank_dir = tmp_path / "shared" / f"rank{rank}"
        link = rank_dir / f"rank{rank}.safetensors"
        assert _inode(link) == _inode(store_like / f"rank{rank}.safetensors")
        assert meta["onnx"]["ranks"][rank]["shared"]["file"] == link.name
        for segment in rank_dir.glob("segment_*.onnx"):  # every segment points at its rank's
            assert set(_locations(segment)) <= {"model.onnx.data", link.name}
    prompts = random_prompts(2)
    got, want = _scores(tmp_path / "shared", prompts), _scores(tmp_path / "plain", prompts)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arch", ["gpt2", "falcon", "gemma2", "mixtral"])
def test_families_share_with_the_same_logits(tmp_path: Path, arch: str) -> None:
    """Biases and Conv1D-converted linears (GPT-2), fused qkv (Falcon), soft-caps and
    sandwich norms (Gemma 2), experts (Mixtral): every family checked by hand with all of
    tests/tinymodels.ARCHES was bit-identical; these four stay in the tier."""
    _, ckpt = tiny_checkpoint(tmp_path, arch)
    build_engine("onnxruntime", ckpt, tmp_path / "plain", OPTIONS)
    store_like = tmp_path / "read-only"
    shutil.copytree(ckpt, store_like)
    os.chmod(store_like / "rank0.safetensors", 0o444)
    meta = build_engine("onnxruntime", store_like, tmp_path / "shared", OPTIONS)
    assert meta["onnx"]["ranks"][0]["shared"] is not None
    prompts = random_prompts(2, vocab=200)
    got, want = _scores(tmp_path / "shared", prompts), _scores(tmp_path / "plain", prompts)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_engine_perf_counts_the_weights_a_shared_engine_reads(tmp_path: Path) -> None:
    """bench/engine_perf's weights column: the bytes the graphs read, not the folder's
    files (a shared engine's folder also names the whole shard file)."""
    from bench.engine_perf import weights_bytes

    _, ckpt = tiny_checkpoint(tmp_path, "llama")
    build_engine("onnxruntime", ckpt, tmp_path / "plain", OPTIONS)
    os.chmod(ckpt / "rank0.safetensors", 0o444)
    build_engine("onnxruntime", ckpt, tmp_path / "shared", OPTIONS)
    plain, shared = weights_bytes(tmp_path / "plain"), weights_bytes(tmp_path / "shared")
    assert abs(plain - shared) <= 4096  # alignment padding only
