"""Backends: plugin validation, missing-dependency errors, trtllm-build argv, TensorRT typing.

No TensorRT or TensorRT-LLM exists on this machine and none is faked: the tests
assert the real "missing" paths, the pure configuration functions, and that the
TensorRT backend type-checks against the installed ``tensorrt-stubs``.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_support import OPTIONS, tiny_checkpoint
from trtllm_forge.engine.backends import (
    BuildOptions,
    backend_unavailable,
    build_engine,
    validate_plugins,
)
from trtllm_forge.engine.backends.tensorrt import (
    profile_shapes,
    tensorrt_available,
    wants_strongly_typed,
)
from trtllm_forge.engine.backends.trtllm import trtllm_build_argv
from trtllm_forge.engine.spec import read_checkpoint
from trtllm_forge.errors import ExitCode, ForgeError

ROOT = Path(__file__).resolve().parents[1]


# -- plugin validation --------------------------------------------------------------------


def test_plugins_on_onnx_backends_are_errors() -> None:
    for backend in ("onnxruntime", "tensorrt"):
        errors = validate_plugins(backend, {"gpt_attention_plugin": "auto"})
        assert errors and "gpt_attention_plugin" in errors[0] and "backend: trtllm" in errors[0]
        assert validate_plugins(backend, {}) == []


def test_trtllm_plugins_are_checked_by_name_value_and_combination() -> None:
    assert (
        validate_plugins("trtllm", {"gpt_attention_plugin": "float16", "gemm_plugin": "auto"}) == []
    )
    assert (
        validate_plugins("trtllm", {"remove_input_padding": True, "kv_cache_type": "paged"}) == []
    )
    assert (
        "unknown trtllm plugin or feature 'gemm_plugn'"
        in validate_plugins("trtllm", {"gemm_plugn": "auto"})[0]
    )
    assert "not one of" in validate_plugins("trtllm", {"gemm_plugin": "int3"})[0]
    no_attention = validate_plugins("trtllm", {"gpt_attention_plugin": "disable"})
    assert any("remove_input_padding needs gpt_attention_plugin" in e for e in no_attention)
    assert any("kv_cache_type: paged needs gpt_attention_plugin" in e for e in no_attention)
    ok = {
        "gpt_attention_plugin": False,
        "remove_input_padding": False,
        "kv_cache_type": "continuous",
        "context_fmha": False,
    }
    assert validate_plugins("trtllm", ok) == []
    assert validate_plugins(
        "trtllm", {"gemm_swiglu_plugin": "fp8", "use_fused_mlp": "disable"}
    ) == ["gemm_swiglu_plugin needs use_fused_mlp enabled"]
    assert (
        "not both"
        in validate_plugins("trtllm", {"paged_kv_cache": True, "kv_cache_type": "paged"})[0]
    )
    assert "unknown backend" in validate_plugins("vllm", {})[0]


def test_build_options_are_checked_before_building(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="gpt_attention_plugin") as err:
        build_engine(
            "onnxruntime",
            tmp_path,
            tmp_path / "out",
            BuildOptions(plugins={"gpt_attention_plugin": "auto"}),
        )
    assert err.value.code == ExitCode.RECIPE
    with pytest.raises(ForgeError, match="below max_seq_len"):
        build_engine(
            "onnxruntime",
            tmp_path,
            tmp_path / "out",
            BuildOptions(max_input_len=64, max_seq_len=64),
        )


# -- tensorrt -------------------------------------------------------------------------------


def test_tensorrt_reports_why_it_is_unavailable_in_one_line() -> None:
    reason = tensorrt_available()
    assert reason is not None and "\n" not in reason
    assert "TensorRT" in reason or "CUDA" in reason
    assert backend_unavailable("tensorrt") == reason
    assert backend_unavailable("onnxruntime") is None


def test_tensorrt_build_without_tensorrt_is_a_dependency_error(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path)
    with pytest.raises(ForgeError) as err:
        build_engine("tensorrt", ckpt, tmp_path / "trt", OPTIONS)
    assert err.value.code == ExitCode.DEPENDENCY
    assert "tensorrt backend:" in err.value.message and "onnxruntime" in (err.value.hint or "")


def test_tensorrt_refuses_tp_above_one(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path, tp=2)
    with pytest.raises(ForgeError, match="tp=1 ranks only") as err:
        build_engine("tensorrt", ckpt, tmp_path / "trt", OPTIONS)
    assert err.value.code == ExitCode.RECIPE


def test_tensorrt_profiles_cover_every_graph_input(tmp_path: Path) -> None:
    from trtllm_forge.engine.onnx.lower import lower_checkpoint

    _, ckpt = tiny_checkpoint(tmp_path, pp=2, num_key_value_heads=1)
    lowered = lower_checkpoint(ckpt, tmp_path / "onnx", segments=False)
    model = read_checkpoint(ckpt).model
    options = BuildOptions(max_batch_size=4, max_input_len=32, max_seq_len=96)
    for rank in lowered["ranks"]:
        shapes = profile_shapes(rank["inputs"], model, 1, options)
        assert set(shapes) == {i["name"] for i in rank["inputs"]}
        for low, opt, high in shapes.values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))
    last = profile_shapes(lowered["ranks"][1]["inputs"], model, 1, options)
    assert last["hidden_states_in"] == ((1, 1, 64), (2, 16, 64), (4, 32, 64))
    assert last["attention_mask"] == ((1, 1), (2, 48), (4, 96))
    assert last["past_key_values.1.key"] == ((1, 1, 0, 16), (2, 1, 48, 16), (4, 1, 95, 16))
    assert not wants_strongly_typed(model, options)


def _sanitized_stubs(dest: Path) -> Path:
    """A copy of the installed tensorrt-stubs that mypy can parse.

    tensorrt-stubs 10.13.0.35.1 is generated by pybind11-stubgen and has Python syntax
    errors (parameters named ``in``, a parameter without default after defaults) and an
    import of the runtime-only ``tensorrt_libs``. Only those lines are rewritten.
    """
    import tensorrt_bindings  # noqa: F401  (namespace package of .pyi files)

    site = Path(next(iter(sys.modules["tensorrt_bindings"].__path__))).parent
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / package, dest / package)
    for stub in dest.rglob("*.pyi"):
        lines = [
            line
            for line in stub.read_text().splitlines()
            if not line.startswith("import tensorrt_libs")
        ]
        for _ in range(100):
            try:
                ast.parse("\n".join(lines))
                break
            except SyntaxError as exc:
                index = (exc.lineno or 1) - 1
                fixed = _fix_signature(lines[index])
                assert fixed != lines[index], f"cannot sanitize {stub}:{exc.lineno}: {lines[index]}"
                lines[index] = fixed
        stub.write_text("\n".join(lines) + "\n")
    return dest


def _fix_signature(line: str) -> str:
    line = re.sub(r"(?<=[(,] )in(?=:)|(?<=\()in(?=:)", "in_", line)
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not match:
        return line
    params, depth, current = [], 0, ""
    for ch in match.group(2):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            params.append(current)
            current = ""
        else:
            current += ch
    params.append(current)
    seen_default = False
    for i, param in enumerate(params):
        if "=" in param:
            seen_default = True
        elif seen_default and not param.strip().startswith("*"):
            params[i] = param + " = ..."
    return match.group(1) + ",".join(params) + match.group(3)


def test_tensorrt_backend_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    stubs = _sanitized_stubs(tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    config.write_text(
        f"[mypy]\nstrict = True\nmypy_path = {stubs}\ncache_dir = {tmp_path / 'cache'}\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n"
        # Not re-checking torch/onnx keeps this test at seconds; forge's own modules are checked.
        "[mypy-torch,torch.*,onnx,onnx.*,transformers,transformers.*,safetensors,safetensors.*]\n"
        "follow_imports = skip\n"
        # Other helpers' modules are followed for types, their own findings are not ours.
        "[mypy-trtllm_forge.checkpoint.*,trtllm_forge.quant.*,trtllm_forge.models.*]\n"
        "follow_imports = silent\n"
    )
    target = "trtllm_forge/engine/backends/tensorrt.py"
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), target],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    # The stubs were really used: a wrong TensorRT call is caught.
    broken = tmp_path / "broken_tensorrt.py"
    broken.write_text(
        "import tensorrt as trt\n\n\ndef f(b: trt.Builder) -> None:\n"
        "    b.create_builder_config().builder_optimization_level = 'high'\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), str(broken)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (
        run.returncode == 1 and "broken_tensorrt.py:5: error: Incompatible types" in run.stdout
    ), run.stdout


# -- trtllm ---------------------------------------------------------------------------------


def test_trtllm_build_argv_spells_out_limits_and_switches(tmp_path: Path) -> None:
    options = BuildOptions(
        max_batch_size=4, max_input_len=100, max_seq_len=300,
        plugins={"gemm_plugin": "float16", "paged_kv_cache": False},
    )  # fmt: skip
    argv = trtllm_build_argv(Path("ck"), Path("out"), options)
    assert argv[:5] == ["trtllm-build", "--checkpoint_dir", "ck", "--output_dir", "out"]
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert (
        flags["--max_batch_size"] == "4"
        and flags["--max_input_len"] == "100"
        and flags["--max_seq_len"] == "300"
    )
    assert flags["--gemm_plugin"] == "float16"
    assert flags["--gpt_attention_plugin"] == "auto"  # trtllm-build's default, made explicit
    assert flags["--kv_cache_type"] == "continuous"  # from the deprecated paged_kv_cache: false
    assert flags["--remove_input_padding"] == "enable"
    assert "--paged_kv_cache" not in flags


@pytest.mark.skipif(
    shutil.which("trtllm-build") is not None, reason="trtllm-build is installed here"
)
def test_trtllm_build_missing_is_a_dependency_error_with_install_hint(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path)
    with pytest.raises(ForgeError, match="trtllm-build is not on PATH") as err:
        build_engine("trtllm", ckpt, tmp_path / "trtllm", OPTIONS)
    assert err.value.code == ExitCode.DEPENDENCY
    assert "tensorrt-llm" in (err.value.hint or "")
