"""Hostile inputs: each is refused with a clear ForgeError — the documented exit
code, a message naming the problem, never a traceback — and nothing is written
outside $FORGE_HOME (checked with strace when it is installed) and nothing
partial inside it.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import tracing
from tests.reliability.conftest import Reference
from tests.reliability.harness import REAL_QUANTIZE, Run, audit_store, forge, record, tiny_recipe

pytestmark = pytest.mark.reliability

_COUNTS: dict[str, int] = {}


def rejected(run: Run, codes: tuple[int, ...], *fragments: str) -> None:
    assert run.code in codes, f"exit {run.code}, wanted {codes}:\n{run.text}"
    assert "Traceback" not in run.text and "internal error" not in run.text, run.text
    for fragment in fragments:
        assert fragment in run.err, f"{fragment!r} not in:\n{run.err}"


def build_rejected(
    home: Path,
    recipe: Path,
    codes: tuple[int, ...],
    *fragments: str,
    kind: str,
    extra_roots: tuple[Path, ...] = (),
    until: str = "convert",
) -> Run:
    """`forge build --until <until>` must refuse; the store stays clean; nothing escapes."""
    if tracing.available():
        run, written = tracing.traced_forge(home, "build", str(recipe), "--until", until)
        assert tracing.outside(written, home, *extra_roots) == [], "wrote outside FORGE_HOME"
    else:
        run = forge(home, "build", str(recipe), "--until", until)
    rejected(run, codes, *fragments)
    assert audit_store(home) == []
    assert not list((home / "artifacts").glob(f"{until}/*")), f"a {until} artifact was committed"
    assert not list((home / "tmp").glob("*")) if (home / "tmp").exists() else True, "staging left"
    _COUNTS[kind] = _COUNTS.get(kind, 0) + 1
    return run


@pytest.fixture(scope="module", autouse=True)
def _record_counts() -> Any:
    yield
    record(
        "hostile",
        {
            "rejected": dict(sorted(_COUNTS.items())),
            "total": sum(_COUNTS.values()),
            "write_tracing": tracing.available(),
        },
    )


def model_copy(ref: Reference, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(ref.model, dst)
    return dst


# -- lying safetensors ----------------------------------------------------------------
def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict[str, Any], body: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def _tensors(header: dict[str, Any]) -> list[str]:
    return sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0]
    )


def _edit(change: Callable[[dict[str, Any], list[str]], None]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        header, body = _split(data)
        change(header, _tensors(header))
        return _join(header, body)

    return apply


def _set(field: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any], list[str]], None]:
    def change(header: dict[str, Any], names: list[str]) -> None:
        header[names[0]][field] = value(header[names[0]][field])

    return change


def _overlap(header: dict[str, Any], names: list[str]) -> None:
    header[names[1]]["data_offsets"] = list(header[names[0]]["data_offsets"])
    header[names[1]]["shape"] = list(header[names[0]]["shape"])
    header[names[1]]["dtype"] = header[names[0]]["dtype"]


LIES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "header-length-past-eof": (lambda d: _join(*_split(d), length=len(d) * 4), "runs past the end"),
    "header-length-huge": (lambda d: _join(*_split(d), length=2**63), "larger than"),
    "header-not-json": (
        lambda d: struct.pack("<Q", 16) + b"{not json at all" + d[8:],
        "not valid JSON",
    ),
    "header-not-object": (lambda d: struct.pack("<Q", 8) + b"[1,2,3] " + d[8:], "not an object"),
    "offsets-past-eof": (
        _edit(_set("data_offsets", lambda o: [o[0], o[1] + 10**9])),
        "data_offsets",
    ),
    "overlapping-tensors": (_edit(_overlap), "overlap"),
    "shape-disagrees-with-offsets": (_edit(_set("shape", lambda s: [d * 2 for d in s])), "needs"),
    "huge-shape": (_edit(_set("shape", lambda s: [10**12, 10**12])), "needs"),
    "negative-dim": (_edit(_set("shape", lambda s: [-1, *s[1:]])), "invalid shape"),
    "unknown-dtype": (_edit(_set("dtype", lambda d: "Q4_K")), "unknown dtype"),
    "reversed-offsets": (
        _edit(_set("data_offsets", lambda o: [o[1], o[0]])),
        "invalid data_offsets",
    ),
    "truncated-data": (lambda d: d[: len(d) - len(d) // 3], "past its end"),
    "truncated-header": (lambda d: d[:20], "runs past the end"),
    "four-bytes": (lambda d: d[:4], "8-byte header length"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_lying_safetensors_is_a_source_error(
    reference: Reference, tmp_path: Path, lie: str
) -> None:
    model = model_copy(reference, tmp_path)
    weights = model / "model.safetensors"
    mutate, fragment = LIES[lie]
    weights.write_bytes(mutate(weights.read_bytes()))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(
        tmp_path / "home", recipe, (5,), "model.safetensors", fragment, kind="safetensors"
    )


# -- absurd configs -------------------------------------------------------------------
ABSURD = {
    "hidden_size": 10**12,
    "num_hidden_layers": 10**9,
    "vocab_size": 10**13,
    "intermediate_size": 10**15,
    "num_attention_heads": 0,
    "head_dim": 10**9,
}


@pytest.mark.parametrize("field", sorted(ABSURD))
def test_absurd_config_is_rejected_before_allocating(
    reference: Reference, tmp_path: Path, field: str
) -> None:
    model = model_copy(reference, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config[field] = ABSURD[field]
    (model / "config.json").write_text(json.dumps(config))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(tmp_path / "home", recipe, (2, 5), "config", kind="config")


# -- code execution: pickle, remote code -------------------------------------------------
class _Bomb:
    """Unpickling this runs ``open(marker, "w")``: the proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def test_pickle_only_checkpoint_needs_allow_pickle_and_is_never_loaded(
    reference: Reference, tmp_path: Path
) -> None:
    model = model_copy(reference, tmp_path)
    marker = tmp_path / "PICKLE-WAS-LOADED"
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb(marker)))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(tmp_path / "home", recipe, (2,), "pickle", "allow_pickle", kind="pickle")
    assert not marker.exists()


def test_allowed_pickle_is_loaded_as_weights_only_and_never_runs_code(
    reference: Reference, tmp_path: Path
) -> None:
    """With allow_pickle: true fetch loads the pickle with torch.load(weights_only=True)
    to write it as safetensors: a pickle that names a callable is refused, not called."""
    model = model_copy(reference, tmp_path)
    marker = tmp_path / "PICKLE-WAS-LOADED"
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Bomb(marker)}))
    recipe = tiny_recipe(
        tmp_path / "recipe.yaml", model, source={"path": str(model), "allow_pickle": True}
    )
    build_rejected(
        tmp_path / "home", recipe, (5,), "pytorch_model.bin", "weights_only", kind="pickle"
    )
    assert not marker.exists()
    assert not list((tmp_path / "home" / "artifacts").glob("fetch/*")), "a fetch was committed"


def test_pickle_next_to_safetensors_is_ignored(reference: Reference, tmp_path: Path) -> None:
    model = model_copy(reference, tmp_path)
    marker = tmp_path / "PICKLE-WAS-LOADED"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb(marker)))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    run = forge(tmp_path / "home", "build", str(recipe), "--until", "convert")
    assert run.code == 0, run.text
    assert not marker.exists()


EVIL_MODULE = "import pathlib\npathlib.Path({marker!r}).write_text('remote code ran')\n"


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_auto_map_remote_code_is_never_honoured(
    reference: Reference, tmp_path: Path, where: str
) -> None:
    model = model_copy(reference, tmp_path)
    marker = tmp_path / "REMOTE-CODE-RAN"
    (model / "modeling_evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    (model / "tokenization_evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    doc = json.loads((model / where).read_text())
    doc["auto_map"] = {
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
    }
    (model / where).write_text(json.dumps(doc))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(tmp_path / "home", recipe, (2,), "auto_map", kind="remote-code")
    assert not marker.exists()


def test_architecture_outside_transformers_is_refused(reference: Reference, tmp_path: Path) -> None:
    model = model_copy(reference, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["EvilForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(tmp_path / "home", recipe, (2,), "EvilForCausalLM", kind="remote-code")


# -- tokenizers nobody can load -----------------------------------------------------------
TOKENIZERS: dict[str, Callable[[Path], None]] = {
    "missing": lambda model: (model / "tokenizer.json").unlink(),
    "not-json": lambda model: (model / "tokenizer.json").write_text('{"model": [1, 2'),
    "wrong-structure": lambda model: (model / "tokenizer.json").write_text(
        '{"model": {"type": "BPE"}}'
    ),
    "not-utf8": lambda model: (model / "tokenizer.json").write_bytes(b"\xff\xfe\x00{"),
}


@pytest.mark.parametrize("stage", ["calibrate", "verify"])
@pytest.mark.parametrize("damage", sorted(TOKENIZERS))
def test_unloadable_tokenizer_is_a_source_error(
    reference: Reference, tmp_path: Path, damage: str, stage: str
) -> None:
    """Calibration (a real AWQ run) and verify both tokenize with the model's own tokenizer.
    An unloadable one is refused by `recipe check` and before any stage of a build (it
    used to be found at verify, after convert and the engine build)."""
    model = model_copy(reference, tmp_path)
    TOKENIZERS[damage](model)
    quantize = REAL_QUANTIZE if stage == "calibrate" else {"method": "none"}
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model, quantize=quantize)
    check = forge(tmp_path / "home", "recipe", "check", str(recipe), timeout=120)
    rejected(check, (5,), "tokenizer", "recipe.yaml:")
    build_rejected(tmp_path / "home", recipe, (5,), "tokenizer", kind="tokenizer", until=stage)
    assert not list((tmp_path / "home" / "artifacts").glob("*/*")), "a stage ran first"


# -- recipe paths that are not the files they should be ----------------------------------------
RECIPE_PATHS: dict[str, tuple[str, dict[str, Any], str]] = {
    # name: (stage that must refuse it, recipe sections, fragment of the message)
    "source-path-escapes-to-nothing": (
        "fetch",
        {"source": {"path": "../" * 40 + "no-such-model"}},
        "does not exist",
    ),
    "source-path-is-a-device": (
        "fetch",
        {"source": {"path": "/dev/null"}},
        "not a model directory",
    ),
    "source-path-is-the-root": ("fetch", {"source": {"path": "../" * 40}}, "no config.json"),
    "gguf-is-a-device": ("fetch", {"source": {"gguf": "/dev/zero"}}, "GGUF"),
    "calibration-file-is-a-device": (
        "calibrate",
        {"quantize": {**REAL_QUANTIZE, "calibration": {"file": "/dev/zero"}}},
        "calibration file",
    ),
    "calibration-file-is-a-directory": (
        "calibrate",
        {"quantize": {**REAL_QUANTIZE, "calibration": {"file": "../" * 40 + "etc"}}},
        "calibration file",
    ),
    "verify-text-is-a-device": (
        "verify",
        {"verify": {"text_file": "/dev/zero"}},
        "not a regular file",
    ),
    "verify-text-is-a-fifo": ("verify", {"verify": {"text_file": "fifo"}}, "not a regular file"),
    "verify-text-is-a-directory": ("verify", {"verify": {"text_file": ".."}}, "not a regular file"),
    "verify-text-escapes-to-nothing": (
        "verify",
        {"verify": {"text_file": "../" * 40 + "no-such.txt"}},
        "does not exist",
    ),
    # A "regular file" of size 0 holding the process environment, tokens included.
    "verify-text-is-proc-environ": (
        "verify",
        {"verify": {"text_file": "/proc/self/environ"}},
        "pseudo-file",
    ),
    "calibration-file-is-proc-environ": (
        "calibrate",
        {"quantize": {**REAL_QUANTIZE, "calibration": {"file": "/proc/self/environ"}}},
        "pseudo-file",
    ),
    "gguf-is-a-directory": ("fetch", {"source": {"gguf": ".."}}, "not a regular file"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_PATHS))
def test_recipe_paths_must_name_regular_files(
    reference: Reference, tmp_path: Path, case: str
) -> None:
    """A device, FIFO or directory where a file belongs would be read forever or crash a
    stage: each is a located source error, and nothing is written outside FORGE_HOME."""
    stage, sections, fragment = RECIPE_PATHS[case]
    work = tmp_path / "recipe-dir"
    work.mkdir()
    os.mkfifo(work / "fifo")  # never opened for writing: reading it would block forever
    sections = {"source": {"path": str(reference.model)}, **sections}
    recipe = tiny_recipe(work / "recipe.yaml", reference.model, **sections)
    run = build_rejected(tmp_path / "home", recipe, (5,), fragment, kind="recipe-path", until=stage)
    if stage == "verify":  # points at the recipe line
        assert "recipe.yaml:" in run.err, run.err
    # Every file the recipe names is checked before any stage runs (a /dev/zero text
    # file used to be found at verify, after convert and the engine build).
    assert not list((tmp_path / "home" / "artifacts").glob("*/*")), "a stage ran first"
    check = forge(tmp_path / "home", "recipe", "check", str(recipe), timeout=120)
    rejected(check, (5,), fragment)


# -- paths escaping the model folder ---------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_symlink_out_of_the_snapshot_is_refused(
    reference: Reference, tmp_path: Path, name: str
) -> None:
    model = model_copy(reference, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(model / name, elsewhere / name)
    (model / name).symlink_to(elsewhere / name)
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(tmp_path / "home", recipe, (5,), "symlink", "outside", kind="path-escape")


@pytest.mark.parametrize(
    "shard",
    ["../outside.safetensors", "/tmp/outside.safetensors", "sub/inner.safetensors", "..", ""],
)
def test_index_shard_names_must_stay_in_the_folder(
    reference: Reference, tmp_path: Path, shard: str
) -> None:
    model = model_copy(reference, tmp_path)
    header, _body = _split((model / "model.safetensors").read_bytes())
    weight_map = {name: "model.safetensors" for name in _tensors(header)}
    weight_map[_tensors(header)[0]] = shard
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    build_rejected(
        tmp_path / "home", recipe, (5,), "model.safetensors.index.json", kind="path-escape"
    )


# -- malicious YAML ---------------------------------------------------------------------
def _laughs(levels: int = 12) -> str:
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\nschema_version: 1\nname: bomb\nsource: {path: m}\n"


def _limit_memory() -> None:
    resource.setrlimit(
        resource.RLIMIT_AS, (2 << 30, 2 << 30)
    )  # a bomb would hit this, not the host


YAML_ATTACKS: dict[str, tuple[str, str]] = {
    "billion-laughs": (_laughs(), "aliases"),
    "merge-key-alias": ("base: &b {tp: 2}\nparallel:\n  <<: *b\n", "aliases"),
    "python-object-apply": (
        'x: !!python/object/apply:os.system ["touch {marker}"]\n',
        "unsupported YAML",
    ),
    "python-object-new": (
        'x: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
        "unsupported YAML",
    ),
    "python-name": ("x: !!python/name:os.system\n", "unsupported YAML"),
    "python-module": ("x: !!python/module:os\n", "unsupported YAML"),
    "deep-flow-nesting": ("x: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper"),
    "deep-block-nesting": (
        "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
        "nests deeper",
    ),
    "oversized": ("schema_version: 1\n# " + "x" * (2 << 20) + "\n", "larger than"),
    "not-utf8": ("schema_version: 1\nname: \udcff\n", "not UTF-8"),
}


@pytest.mark.parametrize("attack", sorted(YAML_ATTACKS))
@pytest.mark.parametrize("command", ["recipe-check", "build"])
def test_malicious_yaml_is_refused_safely(tmp_path: Path, attack: str, command: str) -> None:
    marker = tmp_path / "YAML-RAN-CODE"
    text, fragment = YAML_ATTACKS[attack]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text.replace("{marker}", str(marker)).encode("utf-8", "surrogateescape"))
    home = tmp_path / "home"
    args = ("recipe", "check", str(recipe)) if command == "recipe-check" else ("build", str(recipe))
    if tracing.available():
        run, written = tracing.traced_forge(home, *args, timeout=180, preexec_fn=_limit_memory)
        assert tracing.outside(written, home) == [], "wrote outside FORGE_HOME"
    else:
        run = forge(home, *args, timeout=180, preexec_fn=_limit_memory)
    rejected(run, (2,), fragment)
    assert not marker.exists()
    assert not (home / "artifacts").exists()
    _COUNTS["yaml"] = _COUNTS.get("yaml", 0) + 1


def test_unreadable_recipe_and_directory_are_clear(tmp_path: Path) -> None:
    rejected(
        forge(tmp_path / "home", "recipe", "check", str(tmp_path / "missing.yaml")),
        (5,),
        "not found",
    )
    rejected(forge(tmp_path / "home", "recipe", "check", str(tmp_path)), (2,), "directory")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text("schema_version: 1\n")
        locked.chmod(0)
        rejected(forge(tmp_path / "home", "recipe", "check", str(locked)), (2, 5))


# -- recipe arguments that are not files (issue 17) -------------------------------------
RECIPE_ARGS: dict[str, tuple[str, str]] = {
    # name: (path, fragment): each used to be read without limit (the size cap read
    # st_size, 0 for all of them): /dev/zero ran out of memory, a FIFO hung forever.
    "dev-zero": ("/dev/zero", "character device"),
    "fifo": ("fifo.yaml", "FIFO"),
    "proc-environ": ("/proc/self/environ", "pseudo-file"),
}


@pytest.mark.parametrize("command", ["recipe-check", "build"])
@pytest.mark.parametrize("case", sorted(RECIPE_ARGS))
def test_recipe_argument_that_is_not_a_file_is_refused_at_once(
    tmp_path: Path, case: str, command: str
) -> None:
    path, fragment = RECIPE_ARGS[case]
    os.mkfifo(tmp_path / "fifo.yaml")  # never opened for writing
    home = tmp_path / "home"
    args = ("recipe", "check", path) if command == "recipe-check" else ("build", path)
    run = forge(home, *args, cwd=tmp_path, timeout=120, preexec_fn=_limit_memory)
    rejected(run, (2,), fragment)
    assert not (home / "artifacts").exists()
    _COUNTS["recipe-arg"] = _COUNTS.get("recipe-arg", 0) + 1


# -- a bad setting ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "-5", "nan", ""])
def test_bad_lock_timeout_is_a_bad_setting(tmp_path: Path, value: str) -> None:
    run = forge(tmp_path / "home", "cache", "ls", env={"FORGE_LOCK_TIMEOUT": value})
    if value == "":  # empty means unset, like every FORGE_* variable
        assert run.code == 0, run.text
        return
    rejected(run, (2,), "FORGE_LOCK_TIMEOUT")
    _COUNTS["setting"] = _COUNTS.get("setting", 0) + 1


# -- malformed GGUF files (issue 17) ------------------------------------------------------
def _gguf_head(version: int = 3, tensors: int = 0, kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kv)


GGUFS: dict[str, tuple[bytes, str]] = {
    # name: (file bytes, fragment): each used to be exit 1 (struct.error, MemoryError) or 2
    "garbage": (b"\x00garbage bytes, not a model" * 4, "starts with"),
    "2^62-tensors": (_gguf_head(tensors=1 << 62) + bytes(64), "tensor count"),
    "2^40-byte-key": (_gguf_head(kv=1) + struct.pack("<Q", 1 << 40) + bytes(64), "limit"),
    "unknown-version": (_gguf_head(version=7) + bytes(64), "unsupported GGUF version 7"),
    "truncated-header": (_gguf_head(kv=3)[:18], "past the end"),
}


@pytest.mark.parametrize("case", sorted(GGUFS))
def test_malformed_gguf_is_a_source_error(tmp_path: Path, case: str) -> None:
    data, fragment = GGUFS[case]
    (tmp_path / "model.gguf").write_bytes(data)
    recipe = tiny_recipe(tmp_path / "recipe.yaml", tmp_path, source={"gguf": "model.gguf"})
    run = build_rejected(
        tmp_path / "home", recipe, (5,), "model.gguf", fragment, kind="gguf", until="fetch"
    )
    assert "recipe.yaml:" in run.err  # located at source.gguf


def test_gguf_of_an_architecture_forge_cannot_convert_is_refused_at_check(
    tmp_path: Path,
) -> None:
    """Found from the header's general.architecture by `recipe check`: nothing is
    dequantized first (an unsupported model used to be converted for two minutes)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "starcoder2")  # transformers reads it
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    recipe = tiny_recipe(tmp_path / "recipe.yaml", tmp_path, source={"gguf": "model.gguf"})
    rejected(forge(tmp_path / "home", "recipe", "check", str(recipe)), (2,), "'starcoder2'")
    build_rejected(tmp_path / "home", recipe, (2,), "'starcoder2'", kind="gguf", until="fetch")


# -- configs that contradict themselves or name what forge cannot convert -------------------
@pytest.mark.parametrize(
    ("field", "value", "code", "fragment"),
    [
        ("model_type", "nonsense", 5, "model_type 'nonsense'"),
        ("model_type", None, 5, "model_type None"),
        ("architectures", ["Olmo2ForCausalLM"], 2, "forge cannot convert"),
    ],
)
def test_unconvertible_config_is_refused_before_any_stage(
    reference: Reference, tmp_path: Path, field: str, value: Any, code: int, fragment: str
) -> None:
    """An unknown model_type used to pass fetch, convert, calibrate and build and fail in
    verify's reference load (exit 1); an unsupported architecture was found after fetch."""
    model = model_copy(reference, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config[field] = value
    (model / "config.json").write_text(json.dumps(config))
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    rejected(forge(tmp_path / "home", "recipe", "check", str(recipe)), (code,), fragment)
    build_rejected(tmp_path / "home", recipe, (code,), fragment, kind="config", until="verify")
    assert not list((tmp_path / "home" / "artifacts").glob("*/*")), "a stage ran first"


# -- a manifest naming a device (issue 17) ---------------------------------------------------
def test_manifest_naming_a_device_is_damage_not_an_endless_read(
    reference: Reference, tmp_path: Path
) -> None:
    """A fetch manifest whose external root is /dev with a file `zero`: cache verify and
    build used to hash /dev/zero forever (files named by a manifest were not checked)."""
    home = tmp_path / "home"
    assert forge(home, "build", str(reference.recipe), "--until", "fetch").code == 0
    manifest_file = next((home / "artifacts" / "fetch").glob("*/manifest.json"))
    manifest = json.loads(manifest_file.read_text())
    manifest["external"] = {
        "root": "/dev",
        "files": {"zero": {"size": 0, "digest": "blake3:" + "0" * 64}},
        "rehash": True,
    }
    manifest_file.write_text(json.dumps(manifest))
    check = forge(home, "cache", "verify", timeout=120)
    rejected(check, (6,), "1 damaged artifact")
    assert "/dev/zero is not a regular file" in check.out, check.out
    run = forge(home, "build", str(reference.recipe), "--until", "fetch", "--json", timeout=120)
    assert run.code == 0, run.text
    assert "not a regular file" in run.json()["stages"][0]["note"]  # rejected, rebuilt
    assert audit_store(home) == []
    _COUNTS["manifest"] = _COUNTS.get("manifest", 0) + 1


@pytest.mark.parametrize("stage", ["../../canary", "fetch/../..", "nonsense"])
def test_cache_rm_of_an_unknown_stage_is_refused(tmp_path: Path, stage: str) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    run = forge(tmp_path / "home", "cache", "rm", "--stage", stage)
    rejected(run, (2,), "unknown stage")
    assert canary.is_dir()
    _COUNTS["cache-argument"] = _COUNTS.get("cache-argument", 0) + 1


# -- a truncated engine (issue 17: `forge inspect` described it, exit 0) ---------------------
def test_inspect_of_a_truncated_engine_says_it_is_damaged(
    reference: Reference, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(reference.home, home, symlinks=True)
    build_dir = home / "artifacts" / "build" / reference.results["build"][0].split(":", 1)[1]
    data = next(build_dir.glob("engine/rank0/*.onnx.data"))
    with data.open("r+b") as handle:
        handle.truncate(data.stat().st_size // 2)
    for target in (build_dir, build_dir / "engine"):  # the artifact, and its engine folder
        rejected(forge(home, "inspect", str(target)), (6,), "damaged", data.name)
    outside = tmp_path / "exported-engine"  # a copy outside any store: the graphs decide
    shutil.copytree(build_dir / "engine", outside)
    rejected(forge(home, "inspect", str(outside)), (5,), "damaged", data.name)
    _COUNTS["engine"] = _COUNTS.get("engine", 0) + 1
