"""gguf_to_hf parses a GGUF's metadata once (transformers would parse it three times)
and still writes the bytes stock transformers writes (so fetch content digests, and
every key downstream, are unchanged). bench/gguf_fetch.py measures the time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest

from tests.test_fetch_gguf import write_tiny_gguf
from tests.tinymodels import make_tiny_hf
from trtllm_forge.sources import gguf_to_hf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf-once")
    hf_dir = make_tiny_hf("llama", root / "hf", with_tokenizer=True)
    write_tiny_gguf(hf_dir, root / "tiny.gguf")
    return root / "tiny.gguf"


def test_metadata_is_parsed_once_and_the_reader_put_back(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    class CountingReader(gguf.GGUFReader):  # the real reader, counted
        def __init__(self, path: Any, mode: Any = "r") -> None:
            opened.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    name_map = gguf.get_tensor_name_map
    gguf_to_hf(tiny_gguf, tmp_path / "hf")
    assert len(opened) == 1, opened  # config, tensors and tokenizer share one parse
    assert gguf.GGUFReader is CountingReader and gguf.get_tensor_name_map is name_map


def test_output_is_what_stock_transformers_writes(tiny_gguf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    ours = tmp_path / "ours"
    gguf_to_hf(tiny_gguf, ours)

    config = AutoConfig.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    if hasattr(config, "quantization_config"):  # what gguf_to_hf drops too
        del config.quantization_config
    config.name_or_path = tiny_gguf.stem
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    loaded = gguf_utils.load_gguf_checkpoint(
        str(tiny_gguf), return_tensors=True, model_to_load=model
    )
    model.load_state_dict(loaded["tensors"], strict=False)
    model.config.dtype = torch.float32
    model.save_pretrained(tmp_path / "stock", safe_serialization=True)
    for name in ("model.safetensors", "config.json"):
        assert (ours / name).read_bytes() == (tmp_path / "stock" / name).read_bytes(), name
