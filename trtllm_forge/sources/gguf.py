"""Turn a GGUF file into a normal Hugging Face folder (safetensors + tokenizer).

transformers can read GGUF (it dequantizes every tensor to float32), but a model
loaded that way refuses ``save_pretrained``, and its high-level loader also wants
``accelerate``. So we take the three pieces transformers exposes and put them
together ourselves:

1. the config, read from the GGUF metadata (``AutoConfig(..., gguf_file=)``),
   rebuilt without any ``quantization_config``;
2. a fresh model from that config, into which the dequantized tensors of
   ``load_gguf_checkpoint`` are loaded (it undoes llama.cpp's q/k permutation
   and maps tensor names);
3. the tokenizer, rebuilt from the GGUF vocabulary (``AutoTokenizer(..., gguf_file=)``).

Then ``save_pretrained`` writes a plain safetensors folder any stage can read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import dependency_error, recipe_error, source_error
from trtllm_forge.sources.gguf_header import read_header
from trtllm_forge.sources.local import resolve_local
from trtllm_forge.sources.policy import read_config
from trtllm_forge.sources.snapshot import Snapshot

DTYPES = ("float32", "bfloat16", "float16")
_QUIET = NullProgress()

__all__ = ["DTYPES", "gguf_snapshot", "gguf_to_hf", "read_config"]


def gguf_to_hf(
    gguf_file: Path,
    out_dir: Path,
    *,
    dtype: str = "float32",
    progress: Progress = _QUIET,
) -> None:
    """Convert ``gguf_file`` into an HF folder (config, safetensors, tokenizer) at ``out_dir``.

    Quantized GGUF weights (Q4_1, Q8_0, ...) are dequantized; ``float32`` keeps
    the dequantized values exactly, ``bfloat16``/``float16`` round them.

    Raises:
        ForgeError: SOURCE for a missing or unreadable file; RECIPE for an
            unknown dtype or a GGUF architecture transformers cannot load;
            DEPENDENCY when the ``gguf`` package is missing.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    torch_dtype = _torch_dtype(dtype)
    _check_gguf_file(gguf_file)
    _require_gguf_package()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress.log(f"reading GGUF metadata from {gguf_file.name}")
    with _transformers_bars_off(), _one_reader_per_file():
        with _unreadable_is_a_source_error(gguf_file):
            config = _load_config(gguf_file)
            model = _load_model(gguf_file, config, progress)
            tokenizer = _load_tokenizer(gguf_file)
        progress.log(f"saving {type(model).__name__} as {dtype} safetensors to {out_dir}")
        model.to(torch_dtype)
        model.config.dtype = torch_dtype
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)


# What transformers' and gguf's readers raise for metadata they cannot use (a missing
# or mistyped key, an array where a number belongs) once the header itself is sound.
_READ_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError)


@contextmanager
def _unreadable_is_a_source_error(gguf_file: Path) -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as exc:
        raise source_error(
            f"transformers cannot read {gguf_file.name}: {type(exc).__name__}: {exc}",
            hint="the GGUF metadata is incomplete or not what llama.cpp's converters write",
        ) from None


def gguf_snapshot(out_dir: Path) -> Snapshot:
    """The snapshot of a folder written by :func:`gguf_to_hf` (kind ``"gguf"``)."""
    return resolve_local(out_dir, allow_pickle=False, kind="gguf")


def _torch_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise recipe_error(
            f"unknown dtype {name!r} for GGUF conversion", hint=f"use one of {', '.join(DTYPES)}"
        )
    import torch

    return getattr(torch, name)


def _check_gguf_file(path: Path) -> None:
    """The whole header is checked against the file's size (bounded counts and lengths)
    before transformers and the gguf package, which trust it, ever open the file."""
    if not path.is_file():
        raise source_error(f"GGUF file {path} does not exist", hint="check `source.gguf`")
    read_header(path)


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise dependency_error(
            "reading GGUF files needs the `gguf` package", hint="pip install 'gguf>=0.10'"
        ) from None


def _load_config(gguf_file: Path) -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except ValueError as err:  # transformers' message for an unsupported GGUF architecture
        raise recipe_error(
            f"transformers cannot load {gguf_file.name}: {err}",
            hint="convert the model with llama.cpp tooling into a supported architecture",
        ) from None
    # The metadata can carry a quantization_config describing the GGUF blocks; the
    # tensors we save are dequantized, so the saved config must not claim otherwise.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = gguf_file.stem
    return config


def _load_model(gguf_file: Path, config: Any, progress: Progress) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, initialization
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    # Every parameter is overwritten by a GGUF tensor (_check_loaded refuses a file
    # that lacks one), so random initialisation would be wasted work; the tensors are
    # assigned, not copied into a second set of parameters.
    with initialization.no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with _progress_bars(gguf_utils, progress, "dequantizing GGUF tensors"):
        loaded = gguf_utils.load_gguf_checkpoint(
            str(gguf_file), return_tensors=True, model_to_load=model
        )
    result = model.load_state_dict(loaded["tensors"], strict=False, assign=True)
    _check_loaded(result, model, gguf_file)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def _check_loaded(result: Any, model: Any, gguf_file: Path) -> None:
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - tied)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise source_error(
            f"{gguf_file.name} does not match its own config: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})",
            hint="the GGUF file may be truncated or from an unsupported converter",
        )


def _load_tokenizer(gguf_file: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)


@contextmanager
def _progress_bars(module: Any, progress: Progress, description: str) -> Iterator[None]:
    """Route the tqdm bar of ``module`` into forge's Progress for the duration.

    transformers' GGUF loader draws a plain ``tqdm`` bar on stderr, and library
    code must not print. The module-level name is swapped back afterwards.
    """
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return

    def reporting(iterable: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        with progress.task(description, total=len(items)) as task:
            for item in items:
                yield item
                task.advance()

    module.tqdm = reporting
    try:
        yield
    finally:
        module.tqdm = original


@contextmanager
def _one_reader_per_file() -> Iterator[None]:
    """Parse each GGUF file's metadata once, through plain array views, meanwhile;
    build each tensor-name table once.

    transformers builds a fresh ``gguf.GGUFReader`` for the config, the tensors and
    the tokenizer (three parses, four for some tokenizers), and the reader slices its
    ``numpy.memmap`` once per value: a 49k-token vocabulary is ~10^6 slices, each
    paying memmap's ``__array_finalize__``. Measured on SmolLM2-135M (bench.gguf_fetch):
    the parses took several times as long as dequantizing every tensor. A plain
    ``ndarray`` view of the same mapping reads the same bytes without that cost.
    transformers imports the class at each call (``from gguf import GGUFReader``), so
    the module attribute is swapped for the duration and put back afterwards.
    """
    import gguf
    import numpy as np

    original = gguf.GGUFReader
    original_name_map = gguf.get_tensor_name_map
    readers: dict[str, Any] = {}

    class PlainViewReader(original):  # type: ignore[misc, valid-type]
        @property  # type: ignore[override]
        def data(self) -> Any:
            return self._plain

        @data.setter
        def data(self, value: Any) -> None:
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    def shared(path: Any, mode: Any = "r") -> Any:
        if mode != "r":
            return original(path, mode)
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = PlainViewReader(path, mode)
        return readers[key]

    setattr(gguf, "GGUFReader", shared)  # noqa: B010 - a class attribute mypy would refuse
    # transformers asks for the (architecture, layer count) name table once per module
    # of the model (397 times for SmolLM2-135M), and each builds it afresh.
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_name_map)
    try:
        yield
    finally:
        setattr(gguf, "GGUFReader", original)  # noqa: B010
        gguf.get_tensor_name_map = original_name_map
        readers.clear()


@contextmanager
def _transformers_bars_off() -> Iterator[None]:
    """Silence transformers' own progress bars (e.g. "Writing model shards") meanwhile."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
