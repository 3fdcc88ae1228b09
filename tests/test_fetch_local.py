"""resolve_local and read_config on real tiny HF folders."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.helpers import Run, assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.sources import read_config, resolve_local
from trtllm_forge.sources.pickle_weights import pickle_to_safetensors
from trtllm_forge.sources.tokenizer import check_tokenizer_files


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


# -- the tokenizer, checked before any stage (issue 17 item 9) ---------------------------
TOKENIZER_DAMAGE = {
    "not-json": (b'{"model": [1, 2', "not valid JSON"),
    "not-utf8": (b"\xff\xfe\x00{", "not valid JSON"),
    "wrong-structure": (b'{"model": {"type": "BPE"}}', "without a `vocab` dict"),
    "unknown-model": (b'{"model": {"type": "Nonsense", "vocab": {}}}', "unknown type"),
    "not-an-object": (b"[1, 2]", "JSON object"),
}


@pytest.mark.parametrize("damage", sorted(TOKENIZER_DAMAGE))
def test_unreadable_tokenizer_json_is_refused(model: Path, damage: str) -> None:
    files = resolve_local(model, allow_pickle=False).files
    check_tokenizer_files(model, files, needed_for="verify tokenizes the prompts")  # intact
    data, fragment = TOKENIZER_DAMAGE[damage]
    (model / "tokenizer.json").write_bytes(data)
    # Refused even when nothing tokenizes: build copies the tokenizer into the engine.
    err = expect_error(ExitCode.SOURCE, check_tokenizer_files, model, files, needed_for=None)
    assert "tokenizer.json" in err.message and fragment in err.message, err.message


def test_tokenizer_json_is_read_within_a_cap(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtllm_forge.sources import tokenizer

    size = (model / "tokenizer.json").stat().st_size
    monkeypatch.setattr(tokenizer, "MAX_TOKENIZER_BYTES", size - 1)
    err = expect_error(
        ExitCode.SOURCE, check_tokenizer_files, model, ["tokenizer.json"], needed_for=None
    )
    assert f"larger than {size - 1} bytes" in err.message


def test_missing_tokenizer_is_refused_only_when_something_tokenizes(model: Path) -> None:
    (model / "tokenizer.json").unlink()
    files = resolve_local(model, allow_pickle=False).files
    check_tokenizer_files(model, files, needed_for=None)
    err = expect_error(
        ExitCode.SOURCE, check_tokenizer_files, model, files, needed_for="calibration tokenizes"
    )
    assert "tokenizer_config.json" in err.message and "no tokenizer" in err.message
    assert "calibration tokenizes" in (err.hint or "")
    # No tokenizer files at all: a weights-only folder, which `--until calibrate` builds.
    (model / "tokenizer_config.json").unlink()
    files = resolve_local(model, allow_pickle=False).files
    check_tokenizer_files(model, files, needed_for="calibration tokenizes")


def test_a_tokenizer_the_check_accepts_loads(model: Path) -> None:
    """The check is the cheap half: what it passes, transformers loads."""
    from trtllm_forge.sources.tokenizer import load_tokenizer

    check_tokenizer_files(model, resolve_local(model, allow_pickle=False).files, needed_for="x")
    assert load_tokenizer(model, needed_for="x")("hello").input_ids


# -- pickle weights, taken with allow_pickle and written as safetensors by fetch ---------
@pytest.fixture(scope="module")
def tied_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose head is tied to its embeddings (two names, one storage)."""
    return make_tiny_hf(
        "llama", tmp_path_factory.mktemp("tied"), with_tokenizer=True, tie_word_embeddings=True
    )


def save_state_dict(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    """``dst``: ``src`` with its safetensors replaced by ``torch.save`` of the state dict
    transformers loads from it; returns that state dict."""
    import transformers

    shutil.copytree(src, dst)
    state = transformers.AutoModelForCausalLM.from_pretrained(src).state_dict()
    torch.save(state, dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    return state


def recipe_for(path: Path, model: Path, **source: object) -> Path:
    return write_recipe(
        path,
        source={"path": str(model), **source},
        quantize={"method": "none"},
        build={"max_batch_size": 2, "max_input_len": 32, "max_seq_len": 64},
        verify={"prompts": ["The quick brown fox"], "max_new_tokens": 4, "max_text_tokens": 32},
    )


def stage_dirs(run: Run) -> dict[str, Path]:
    assert run.code == 0, run.err
    return {s["stage"]: Path(s["path"]) for s in run.json()["stages"]}


def test_pickle_checkpoint_builds_end_to_end_from_safetensors_fetch_writes(
    tmp_path: Path, tied_src: Path
) -> None:
    """allow_pickle used to be refused at convert ("convert the checkpoint to safetensors
    first"); fetch now writes the safetensors itself and later stages never see pickle."""
    model = tmp_path / "pickled"
    save_state_dict(tied_src, model)
    refused = forge("plan", str(recipe_for(tmp_path / "no.yaml", model)))
    assert_clean_error(refused, 2, "pytorch_model.bin", "source.allow_pickle: true")

    recipe = recipe_for(tmp_path / "pickle.yaml", model, allow_pickle=True)
    built = stage_dirs(forge("build", str(recipe), "--json"))
    folder = built["fetch"] / "hf"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    report = json.loads((built["verify"] / "report.json").read_text())
    assert report["metrics"]["token_agreement"] == 1.0, report["metrics"]

    # The converted checkpoint is the one the model's own safetensors give, byte for byte.
    original = recipe_for(tmp_path / "st.yaml", tied_src)
    direct = stage_dirs(forge("build", str(original), "--until", "convert", "--json"))
    assert direct["fetch"] != built["fetch"]
    for name in ("config.json", "rank0.safetensors"):
        assert (built["convert"] / name).read_bytes() == (direct["convert"] / name).read_bytes()
    again = forge("build", str(recipe), "--json")
    assert {s["status"] for s in again.json()["stages"]} == {"hit"}, again.out


def test_sharded_pickle_checkpoint_keeps_every_tensor(tmp_path: Path, tied_src: Path) -> None:
    model = tmp_path / "sharded"
    state = save_state_dict(tied_src, model)
    (model / "pytorch_model.bin").unlink()
    names = sorted(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": names[::2],
        "pytorch_model-00002-of-00002.bin": names[1::2],
    }
    for shard, part in halves.items():
        torch.save({name: state[name] for name in part}, model / shard)
    weight_map = {name: shard for shard, part in halves.items() for name in part}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (model / "training_args.bin").write_bytes(pickle.dumps({"not": "weights"}))

    out = tmp_path / "out"
    count = pickle_to_safetensors(resolve_local(model, allow_pickle=True), out)
    assert count == len(state)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == names
    assert not list(out.glob("*.bin*"))
    for name, tensor in state.items():
        with safe_open(str(out / index["weight_map"][name]), framework="pt") as handle:
            assert torch.equal(handle.get_tensor(name), tensor), name


class _Bomb:
    """Unpickling this runs ``open(marker, "w")``: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.marker, "w"))


def test_allowed_pickle_never_runs_code(model: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PICKLE-RAN"
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Bomb(marker)}))
    snap = resolve_local(model, allow_pickle=True)
    err = expect_error(ExitCode.SOURCE, pickle_to_safetensors, snap, tmp_path / "out")
    assert "pytorch_model.bin" in err.message and "weights_only=True" in err.message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        # 16 names over one 1 MiB storage: a small file that would write 16 MiB.
        (lambda: {f"w{i}": torch.zeros(1 << 18).expand(16, -1)[i] for i in range(16)}, None),
        (lambda: {f"w{i}": torch.zeros(1 << 18)[None].expand(16, -1) for i in range(16)}, "twice"),
        (lambda: [torch.zeros(4)], "not a state dict"),
        (lambda: {"w": 1.5}, "not a dense tensor"),
        (lambda: {"w": torch.zeros(4).to_sparse()}, "not a dense tensor"),
    ],
)
def test_pickle_content_is_bounded_and_plain(
    model: Path, tmp_path: Path, content: Callable[[], object], fragment: str | None
) -> None:
    (model / "model.safetensors").unlink()
    torch.save(content(), model / "pytorch_model.bin")
    snap = resolve_local(model, allow_pickle=True)
    if fragment is None:  # views of one storage, each its own size: written as they are
        assert pickle_to_safetensors(snap, tmp_path / "out") == 16
        return
    err = expect_error(ExitCode.SOURCE, pickle_to_safetensors, snap, tmp_path / "out")
    assert fragment in err.message and "pytorch_model.bin" in err.message, err.message
