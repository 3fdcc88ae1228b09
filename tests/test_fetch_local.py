"""resolve_local and read_config on real tiny HF folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.tinymodels import make_tiny_hf
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.sources import read_config, resolve_local


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf("qwen2", tmp_path_factory.mktemp("tiny"), with_tokenizer=True)


@pytest.fixture
def model(tmp_path: Path, tiny_src: Path) -> Path:
    return Path(shutil.copytree(tiny_src, tmp_path / "model"))


def expect_error(code: ExitCode, fn, *args, **kwargs) -> ForgeError:  # type: ignore[no-untyped-def]
    with pytest.raises(ForgeError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value


def test_lists_top_level_files_with_sizes(model: Path) -> None:
    (model / "README.md").write_text("not a model file")
    (model / "onnx").mkdir()
    (model / "onnx" / "model.safetensors").write_bytes(b"other format")
    snap = resolve_local(model, allow_pickle=False)
    assert (snap.kind, snap.commit, snap.root, snap.source) == ("path", None, model, str(model))
    expected = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert set(snap.files) == expected
    for name, ref in snap.files.items():
        assert ref.size == (model / name).stat().st_size
        assert ref.digest is None  # local digests are the store's job


def test_relative_path_is_made_absolute(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model.parent)
    assert resolve_local(Path("model"), allow_pickle=False).root == model


def test_missing_dir_and_file_instead_of_dir(tmp_path: Path, model: Path) -> None:
    err = expect_error(ExitCode.SOURCE, resolve_local, tmp_path / "nope", allow_pickle=False)
    assert "does not exist" in err.message
    err = expect_error(ExitCode.SOURCE, resolve_local, model / "config.json", allow_pickle=False)
    assert "not a model directory" in err.message


def test_no_config_or_no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()
    err = expect_error(ExitCode.SOURCE, resolve_local, model, allow_pickle=True)
    assert "no weight files" in err.message
    (model / "config.json").unlink()
    err = expect_error(ExitCode.SOURCE, resolve_local, model, allow_pickle=True)
    assert "config.json" in err.message


def test_pickle_only_folder(model: Path) -> None:
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    err = expect_error(ExitCode.RECIPE, resolve_local, model, allow_pickle=False)
    assert "pytorch_model.bin" in err.message and "source.allow_pickle: true" in (err.hint or "")
    snap = resolve_local(model, allow_pickle=True)
    assert snap.weight_files == ["pytorch_model.bin"]


def test_escaping_symlink_rejected(model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    (model / "model.safetensors").rename(outside)
    (model / "model.safetensors").symlink_to(outside)
    err = expect_error(ExitCode.SOURCE, resolve_local, model, allow_pickle=False)
    assert "outside the model directory" in err.message and "model.safetensors" in err.message


def test_inner_symlink_accepted(model: Path) -> None:
    (model / "weights").mkdir()
    (model / "model.safetensors").rename(model / "weights" / "w.safetensors")
    (model / "model.safetensors").symlink_to(Path("weights") / "w.safetensors")
    snap = resolve_local(model, allow_pickle=False)
    assert (
        snap.files["model.safetensors"].size == (model / "weights" / "w.safetensors").stat().st_size
    )


def write_index(model: Path, shards: list[str]) -> None:
    weight_map = {f"t{i}": shard for i, shard in enumerate(shards)}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_index_shard_escaping_with_dotdot_rejected(model: Path) -> None:
    write_index(model, ["model.safetensors", "../model.safetensors"])
    err = expect_error(ExitCode.SOURCE, resolve_local, model, allow_pickle=False)
    assert "'../model.safetensors'" in err.message


def test_index_with_missing_shard(model: Path) -> None:
    write_index(model, ["model.safetensors", "model-2.safetensors"])
    err = expect_error(ExitCode.SOURCE, resolve_local, model, allow_pickle=False)
    assert "model-2.safetensors" in err.message and "missing" in err.message
    (model / "model-2.safetensors").write_bytes(b"x")
    assert "model-2.safetensors" in resolve_local(model, allow_pickle=False).files


def test_remote_code_refused(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (model / "config.json").write_text(json.dumps(config))
    err = expect_error(ExitCode.RECIPE, resolve_local, model, allow_pickle=False)
    assert "configuration_x.XConfig" in err.message


def test_config_without_architectures(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    del config["architectures"]
    (model / "config.json").write_text(json.dumps(config))
    err = expect_error(ExitCode.SOURCE, resolve_local, model, allow_pickle=False)
    assert "architectures" in err.message


def test_read_config_parses_and_reports_bad_json(model: Path) -> None:
    assert read_config(model)["model_type"] == "qwen2"
    (model / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": }')
    err = expect_error(ExitCode.SOURCE, read_config, model)
    assert "line 2" in err.message and "config.json" in err.message
    (model / "config.json").write_text("[1, 2]")
    err = expect_error(ExitCode.SOURCE, read_config, model)
    assert "JSON object" in err.message
    (model / "config.json").unlink()
    expect_error(ExitCode.SOURCE, read_config, model)
