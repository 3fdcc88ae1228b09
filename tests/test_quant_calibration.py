"""Calibration data: built-in corpus, user files, seeded windows and digests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.quant import calibration as calib


def test_builtin_corpus_ships_with_attribution() -> None:
    docs = calib.read_documents(None)
    assert len(docs) == 20
    assert sum(len(d) for d in docs) > 10_000
    readme = calib.builtin_corpus_path().parent / "README.md"
    assert "CC0" in readme.read_text()


def test_txt_documents_split_at_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first line\nsame doc\n\n\nsecond doc\n")
    assert calib.read_documents(path) == ["first line\nsame doc", "second doc"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ForgeError) as err:
        calib.read_documents(path)
    assert err.value.code == ExitCode.RECIPE
    assert f"{path}:2" in err.value.message


def test_missing_and_empty_files_are_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="not found"):
        calib.read_documents(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ForgeError, match="holds no text"):
        calib.read_documents(empty)


def test_windows_are_seeded_and_sized() -> None:
    stream = list(range(1000))
    a = calib.sample_windows(stream, samples=4, seq_len=16, seed=3)
    b = calib.sample_windows(stream, samples=4, seq_len=16, seed=3)
    c = calib.sample_windows(stream, samples=4, seq_len=16, seed=4)
    assert a.shape == (4, 16) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Windows are contiguous runs of the stream.
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(4, 15, dtype=torch.int64))


def test_short_streams_repeat_and_bos_leads_each_window() -> None:
    windows = calib.sample_windows([5, 6, 7], samples=2, seq_len=10, seed=0, bos=1)
    assert windows.shape == (2, 10)
    assert windows[:, 0].tolist() == [1, 1]
    assert set(windows[:, 1:].flatten().tolist()) <= {5, 6, 7}


def test_load_calibration_uses_the_model_tokenizer(tiny_models: dict[str, Path]) -> None:
    spec = calib.CalibrationSpec(samples=3, seq_len=12, seed=0)
    data = calib.load_calibration(spec, tiny_models["llama"])
    again = calib.load_calibration(spec, tiny_models["llama"])
    assert data.tokens.shape == (3, 12)
    assert data.source == "builtin" and data.source_tokens > 1000
    assert data.digest == again.digest and data.digest.startswith("blake3:")
    other = calib.load_calibration(
        calib.CalibrationSpec(samples=3, seq_len=12, seed=1), tiny_models["llama"]
    )
    assert other.digest != data.digest
    assert int(data.tokens.max()) < 256


def test_source_digest_tracks_text_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("alpha beta\n")
    base = calib.source_digest(calib.CalibrationSpec(file=path))
    assert base == calib.source_digest(calib.CalibrationSpec(file=path))
    assert base != calib.source_digest(calib.CalibrationSpec(file=path, seed=1))
    path.write_text("alpha gamma\n")
    assert base != calib.source_digest(calib.CalibrationSpec(file=path))


def test_missing_tokenizer_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(ForgeError) as err:
        calib.load_tokenizer(tmp_path)
    assert err.value.code == ExitCode.SOURCE


def test_from_tokens_checks_shape() -> None:
    data = calib.from_tokens(torch.zeros(2, 5, dtype=torch.int32))
    assert data.tokens.dtype == torch.int64 and data.batches(1)[0].shape == (1, 5)
    with pytest.raises(ForgeError):
        calib.from_tokens(torch.zeros(5, dtype=torch.int64))
