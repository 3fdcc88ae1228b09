"""resolve_hf against a real huggingface_hub cache layout, offline.

``write_hub_snapshot`` lays files out exactly as huggingface_hub's downloader
does (``blobs/<etag>``, ``refs/<name>``, ``snapshots/<sha>/<file>`` relative
symlinks, ``trees/<sha>.json`` listing), and the first test proves it by asking
huggingface_hub itself to read it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import forge, write_recipe
from tests.tinymodels import make_tiny_hf
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.sources import hub_cache_dir, resolve_hf

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
REPO = "forge-test/tiny-llama"
SECRET = "hf_FAKEsecretTOKENvalue0123456789"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    oid = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
    )


def write_hub_snapshot(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str,
    refs: tuple[str, ...] = ("main",),
    listed_only: dict[str, bytes] | None = None,
    tree: bool = True,
) -> Path:
    """Write one commit of ``repo_id`` into an HF hub cache; return its snapshot folder.

    ``listed_only`` files appear in the cached hub listing (trees/<sha>.json) but
    were not downloaded, as after a filtered ``snapshot_download``.
    """
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    listing: dict[str, dict[str, object]] = {}
    for name, data in {**files, **(listed_only or {})}.items():
        lfs = name.endswith(LFS_SUFFIXES)
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        entry: dict[str, object] = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if lfs:
            entry = {
                "size": len(data),
                "blob_id": git_blob_sha1(lfs_pointer(data)),
                "lfs_sha256": etag,
                "lfs_size": len(data),
            }
        listing[name] = entry
        if name not in files:
            continue
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = snapshot / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    for ref in refs:
        ref_file = storage / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    if tree:
        trees = storage / "trees"
        trees.mkdir(parents=True, exist_ok=True)
        doc = {"format_version": 1, "files": dict(sorted(listing.items()))}
        (trees / f"{commit}.json").write_text(json.dumps(doc, indent=1))
    return snapshot


def sha_like(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf("llama", tmp_path_factory.mktemp("tiny"), with_tokenizer=True)


@pytest.fixture(scope="module")
def tiny_files(tiny_folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tiny_folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def pickle_files(tiny_folder: Path, tiny_files: dict[str, bytes]) -> dict[str, bytes]:
    """The tiny model as a pickle-only repo: torch.save of the state dict transformers
    loads from its safetensors, in place of them."""
    import io

    import torch
    import transformers

    state = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files = {k: v for k, v in tiny_files.items() if not k.endswith(".safetensors")}
    return {**files, "pytorch_model.bin": buffer.getvalue()}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


def expect_error(code: ExitCode, fn, *args, **kwargs) -> ForgeError:  # type: ignore[no-untyped-def]
    with pytest.raises(ForgeError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value


def test_cache_layout_is_read_back_by_huggingface_hub(
    hub: Path, tiny_files: dict[str, bytes]
) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    commit = sha_like("one")
    write_hub_snapshot(hub, REPO, tiny_files, commit=commit)
    info = scan_cache_dir(hub)
    assert not info.warnings
    (repo,) = info.repos
    (rev,) = repo.revisions
    assert (repo.repo_id, rev.commit_hash, set(rev.refs)) == (REPO, commit, {"main"})
    path = hf_hub_download(REPO, "config.json", cache_dir=hub, local_files_only=True)
    assert Path(path).read_bytes() == tiny_files["config.json"]


def test_branch_resolves_to_commit_with_digestes(hub: Path, tiny_files: dict[str, bytes]) -> None:
    commit = sha_like("one")
    snapshot_dir = write_hub_snapshot(hub, REPO, tiny_files, commit=commit)
    snap = resolve_hf(REPO, "main")
    assert (snap.kind, snap.source, snap.commit, snap.revision) == ("hf", REPO, commit, "main")
    assert snap.root == snapshot_dir.resolve()  # the HF cache is used in place
    assert set(snap.files) == set(tiny_files)
    weights = tiny_files["model.safetensors"]
    assert snap.files["model.safetensors"].size == len(weights)
    assert snap.files["model.safetensors"].digest == "sha256:" + hashlib.sha256(weights).hexdigest()
    config = tiny_files["config.json"]
    assert snap.files["config.json"].digest == "git-sha1:" + git_blob_sha1(config)
    assert snap.weight_format == "safetensors"
    assert snap.weight_files == ["model.safetensors"]


def test_revision_none_means_main(hub: Path, tiny_files: dict[str, bytes]) -> None:
    commit = sha_like("one")
    write_hub_snapshot(hub, REPO, tiny_files, commit=commit)
    assert resolve_hf(REPO, None).commit == commit


@pytest.fixture
def two_commits(hub: Path, tiny_files: dict[str, bytes]) -> tuple[str, str]:
    old, new = sha_like("old"), sha_like("new")
    write_hub_snapshot(hub, REPO, tiny_files, commit=old, refs=("v1.0",))
    changed = dict(tiny_files, **{"generation_config.json": b'{"do_sample": false}'})
    write_hub_snapshot(hub, REPO, changed, commit=new, refs=("main",))
    return old, new


def test_tag_full_sha_and_prefix_resolve(two_commits: tuple[str, str]) -> None:
    old, new = two_commits
    assert resolve_hf(REPO, "v1.0").commit == old
    assert resolve_hf(REPO, "main").commit == new
    assert resolve_hf(REPO, old).commit == old
    assert resolve_hf(REPO, new[:8]).commit == new
    assert resolve_hf(REPO, "main").files != resolve_hf(REPO, "v1.0").files


def test_ambiguous_sha_prefix_is_refused(hub: Path, tiny_files: dict[str, bytes]) -> None:
    first, second = "abcdef1" + "0" * 33, "abcdef1" + "1" * 33
    write_hub_snapshot(hub, REPO, tiny_files, commit=first)
    write_hub_snapshot(hub, REPO, tiny_files, commit=second, refs=())
    err = expect_error(ExitCode.RECIPE, resolve_hf, REPO, "abcdef1")
    assert "ambiguous" in err.message and first in err.message and second in err.message
    assert resolve_hf(REPO, "abcdef10").commit == first


def test_missing_revision_offline_names_it(hub: Path, tiny_files: dict[str, bytes]) -> None:
    write_hub_snapshot(hub, REPO, tiny_files, commit=sha_like("one"))
    err = expect_error(ExitCode.SOURCE, resolve_hf, REPO, "v9.9")
    assert "v9.9" in err.message and REPO in err.message
    assert "main" in err.message  # what *is* cached
    assert err.hint and "HF_HUB_OFFLINE" in err.hint and "--revision v9.9" in err.hint


def test_missing_full_sha_offline(hub: Path, tiny_files: dict[str, bytes]) -> None:
    write_hub_snapshot(hub, REPO, tiny_files, commit=sha_like("one"))
    absent = sha_like("absent")
    err = expect_error(ExitCode.SOURCE, resolve_hf, REPO, absent)
    assert absent in err.message


def test_missing_repo(hub: Path) -> None:
    err = expect_error(ExitCode.SOURCE, resolve_hf, "forge-test/no-such-model", "main")
    assert "forge-test/no-such-model" in err.message
    assert err.hint and "hf download forge-test/no-such-model" in err.hint


def test_malformed_repo_id_is_a_recipe_error(hub: Path) -> None:
    expect_error(ExitCode.RECIPE, resolve_hf, "a/b/c", "main")


def test_file_listed_by_hub_but_not_downloaded(hub: Path, tiny_files: dict[str, bytes]) -> None:
    present = {k: v for k, v in tiny_files.items() if k != "model.safetensors"}
    write_hub_snapshot(
        hub, REPO, present, commit=sha_like("one"), listed_only={"model.safetensors": b"x" * 64}
    )
    err = expect_error(ExitCode.SOURCE, resolve_hf, REPO, "main")
    assert "model.safetensors" in err.message and REPO in err.message
    assert err.hint and "hf download" in err.hint


def test_missing_shard_named_by_index(hub: Path, tiny_files: dict[str, bytes]) -> None:
    files = dict(tiny_files)
    files["model-00001-of-00002.safetensors"] = files.pop("model.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    write_hub_snapshot(hub, REPO, files, commit=sha_like("one"), tree=False)
    err = expect_error(ExitCode.SOURCE, resolve_hf, REPO, "main")
    assert "model-00002-of-00002.safetensors" in err.message


def test_only_safetensors_taken_when_pickle_also_present(
    hub: Path, tiny_files: dict[str, bytes]
) -> None:
    files = dict(
        tiny_files, **{"pytorch_model.bin": b"pickle", "original/consolidated.00.pth": b"p"}
    )
    write_hub_snapshot(hub, REPO, files, commit=sha_like("one"))
    snap = resolve_hf(REPO, "main")
    assert set(snap.files) == set(tiny_files)


def test_safetensors_download_needs_no_pickle_in_cache(
    hub: Path, tiny_files: dict[str, bytes]
) -> None:
    # The hub listing has a .bin that was never downloaded: a filtered download is complete.
    write_hub_snapshot(
        hub, REPO, tiny_files, commit=sha_like("one"), listed_only={"pytorch_model.bin": b"p" * 9}
    )
    assert set(resolve_hf(REPO, "main").files) == set(tiny_files)


def test_pickle_only_repo_refused_then_allowed(hub: Path, pickle_files: dict[str, bytes]) -> None:
    write_hub_snapshot(hub, REPO, pickle_files, commit=sha_like("one"))
    err = expect_error(ExitCode.RECIPE, resolve_hf, REPO, "main")
    assert "pytorch_model.bin" in err.message
    assert err.hint and "source.allow_pickle: true" in err.hint
    snap = resolve_hf(REPO, "main", allow_pickle=True)
    assert "pytorch_model.bin" in snap.files
    assert snap.weight_format == "pickle" and snap.weight_files == ["pytorch_model.bin"]


def test_pickle_only_repo_converts_as_its_safetensors_do(
    hub: Path, tmp_path: Path, pickle_files: dict[str, bytes], tiny_files: dict[str, bytes]
) -> None:
    """The flag the refusal's hint names now works: fetch writes the pickle weights as
    safetensors (it used to fail at convert: "convert the checkpoint to safetensors
    first"), and the converted checkpoint equals the one from the safetensors repo."""
    write_hub_snapshot(hub, REPO, pickle_files, commit=sha_like("one"))
    write_hub_snapshot(hub, "forge-test/tiny-st", tiny_files, commit=sha_like("two"))
    converted = {}
    for repo, pickled in ((REPO, True), ("forge-test/tiny-st", False)):
        recipe = write_recipe(
            tmp_path / f"{pickled}.yaml",
            source={"hf": repo, "allow_pickle": pickled},
            quantize={"method": "none"},
        )
        run = forge("build", str(recipe), "--until", "convert", "--json")
        assert run.code == 0, run.err
        paths = {s["stage"]: Path(s["path"]) for s in run.json()["stages"]}
        fetched = sorted(p.name for p in (paths["fetch"] / "hf").glob("*")) if pickled else []
        assert not pickled or (
            "model.safetensors" in fetched and "pytorch_model.bin" not in fetched
        )
        converted[pickled] = (paths["convert"] / "rank0.safetensors").read_bytes()
    assert converted[True] == converted[False]


def with_config(tiny_files: dict[str, bytes], **changes: object) -> dict[str, bytes]:
    config = json.loads(tiny_files["config.json"])
    config.update(changes)
    return dict(tiny_files, **{"config.json": json.dumps(config).encode()})


def test_remote_code_config_refused(hub: Path, tiny_files: dict[str, bytes]) -> None:
    files = with_config(tiny_files, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    write_hub_snapshot(hub, REPO, files, commit=sha_like("one"))
    err = expect_error(ExitCode.RECIPE, resolve_hf, REPO, "main")
    assert "auto_map" in err.message and "modeling_x.XForCausalLM" in err.message
    assert "never executes repository code" in err.message


def test_architecture_unknown_to_transformers_refused(
    hub: Path, tiny_files: dict[str, bytes]
) -> None:
    files = with_config(tiny_files, architectures=["FancyNewForCausalLM"])
    write_hub_snapshot(hub, REPO, files, commit=sha_like("one"))
    err = expect_error(ExitCode.RECIPE, resolve_hf, REPO, "main")
    assert "FancyNewForCausalLM" in err.message


def test_remote_code_tokenizer_refused(hub: Path, tiny_files: dict[str, bytes]) -> None:
    tok = json.loads(tiny_files["tokenizer_config.json"])
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    files = dict(tiny_files, **{"tokenizer_config.json": json.dumps(tok).encode()})
    write_hub_snapshot(hub, REPO, files, commit=sha_like("one"))
    err = expect_error(ExitCode.RECIPE, resolve_hf, REPO, "main")
    assert "tokenizer_config.json" in err.message and "tokenization_x.XTokenizer" in err.message


def test_cache_location_from_hf_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_files: dict[str, bytes]
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    write_hub_snapshot(tmp_path / "home" / "hub", REPO, tiny_files, commit=sha_like("one"))
    assert resolve_hf(REPO, "main").root.is_relative_to(tmp_path / "home" / "hub")


def test_explicit_cache_dir_wins(hub: Path, tmp_path: Path, tiny_files: dict[str, bytes]) -> None:
    other = tmp_path / "other-cache"
    write_hub_snapshot(other, REPO, tiny_files, commit=sha_like("other"))
    assert resolve_hf(REPO, "main", cache_dir=other).commit == sha_like("other")


def test_token_never_shown(
    hub: Path, monkeypatch: pytest.MonkeyPatch, tiny_files: dict[str, bytes]
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    write_hub_snapshot(hub, REPO, tiny_files, commit=sha_like("one"))
    snap = resolve_hf(REPO, "main", token=SECRET)
    assert SECRET not in repr(snap)
    # A token pasted into the revision field is echoed by the "not found" message: scrubbed.
    err = expect_error(ExitCode.SOURCE, resolve_hf, REPO, SECRET, token=SECRET)
    rendered = str(err) + json.dumps(err.to_dict())
    assert SECRET not in rendered and "***" in rendered
    other = "hf_" + "Z" * 20  # a token-shaped string that is not the configured one
    err = expect_error(ExitCode.SOURCE, resolve_hf, REPO, other)
    assert other not in str(err)


def test_unreachable_hub_falls_back_to_cache(tmp_path: Path, tiny_files: dict[str, bytes]) -> None:
    # Online mode against an endpoint nothing listens on: the hub is "down", the cache answers.
    cache = tmp_path / "hf-cache"
    commit = sha_like("one")
    write_hub_snapshot(cache, REPO, tiny_files, commit=commit)
    code = (
        "from contextlib import nullcontext\n"
        "from trtllm_forge.sources import resolve_hf\n"
        "class Log:\n"
        "    def log(self, m): print('log:', m)\n"
        "    def task(self, d, total=None): return nullcontext()\n"
        f"print('commit:', resolve_hf({REPO!r}, 'main', progress=Log()).commit)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_ETAG_TIMEOUT="2")
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr
    assert f"commit: {commit}" in run.stdout
    assert "log: hub unreachable" in run.stdout  # the online path ran, and failed over
