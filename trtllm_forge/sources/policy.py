"""Which files forge takes from a model source, and what it refuses.

The rules are the same for a hub repo and a local directory:

- Only top-level files are considered; subfolders (``original/``, ``onnx/``,
  ``gguf/`` ...) hold other formats of the same model and are ignored.
- Metadata: ``config.json`` (required), ``generation_config.json`` and the
  tokenizer files.
- Weights: safetensors (+ ``*.safetensors.index.json``) whenever the source has
  them. Pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) can run code
  when loaded, so they are taken only when there are no safetensors *and* the
  recipe says ``source.allow_pickle: true``.
- Repository code is never executed: a config (or tokenizer config) with an
  ``auto_map``, or an architecture transformers does not ship, is refused. The
  exception is an architecture forge implements natively (Baichuan 2, ChatGLM 2/3:
  ``Family.native``): its config.json's ``auto_map`` names repository classes forge
  never loads, since forge's own model stands in for them (models/native.py) and the
  repository's ``.py`` files are not among the files taken above.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError, recipe_error, source_error
from trtllm_forge.sources.snapshot import PICKLE_SUFFIXES

METADATA_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"
PICKLE_INDEX_SUFFIX = ".bin.index.json"


def is_top_level(name: str) -> bool:
    return "/" not in name and "\\" not in name


def _is_safetensors(name: str) -> bool:
    return name.endswith(".safetensors") or name.endswith(SAFETENSORS_INDEX_SUFFIX)


def _is_pickle(name: str) -> bool:
    return name.endswith(PICKLE_SUFFIXES) or name.endswith(PICKLE_INDEX_SUFFIX)


def select_files(names: Iterable[str], *, allow_pickle: bool, source: str) -> list[str]:
    """Pick the files forge will use from a source's file listing.

    Args:
        names: relative file paths of the source (hub listing or directory listing).
        allow_pickle: the recipe's ``source.allow_pickle``.
        source: the repo id or path, for messages.

    Returns:
        Sorted top-level file names: metadata plus one weight format.

    Raises:
        ForgeError: SOURCE when ``config.json`` or any weights are missing;
            RECIPE when only pickle weights exist and ``allow_pickle`` is false.
    """
    top = sorted(name for name in set(names) if is_top_level(name))
    if "config.json" not in top:
        raise source_error(
            f"{source} has no config.json at its top level; forge reads Hugging Face format models",
            hint="point the source at the model folder itself (the one holding config.json)",
        )
    metadata = [name for name in top if name in METADATA_FILES]
    safetensors = [name for name in top if _is_safetensors(name)]
    if any(name.endswith(".safetensors") for name in safetensors):
        return sorted(metadata + safetensors)
    pickles = [name for name in top if _is_pickle(name)]
    if not any(name.endswith(PICKLE_SUFFIXES) for name in pickles):
        raise source_error(
            f"{source} has no weight files (*.safetensors, or pickle *.bin/*.pt/*.pth/*.ckpt)",
            hint="for a GGUF file use `source.gguf`; otherwise check the repo/folder holds the weights",
        )
    if not allow_pickle:
        weight = next(name for name in pickles if name.endswith(PICKLE_SUFFIXES))
        raise recipe_error(
            f"{source} ships only pickle weights ({weight}); loading pickle can run arbitrary code",
            hint="set `source.allow_pickle: true` in the recipe if you trust this source",
        )
    return sorted(metadata + pickles)


def read_config(snapshot_root: Path) -> dict[str, Any]:
    """Parse ``<snapshot_root>/config.json``.

    Raises:
        ForgeError: SOURCE if the file is missing, unreadable, not JSON or not an object.
    """
    return _read_json_object(Path(snapshot_root) / "config.json")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise source_error(f"{path} is missing", hint="re-download the model") from None
    except (OSError, UnicodeDecodeError) as err:
        raise source_error(f"cannot read {path}: {err}", hint="re-download the model") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise source_error(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})",
            hint="the file is corrupt or truncated; re-download the model",
        ) from None
    if not isinstance(data, dict):
        raise source_error(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def check_no_remote_code(root: Path, files: Iterable[str], *, source: str) -> dict[str, Any]:
    """Refuse sources that would need their own Python code to load.

    Returns the parsed config.json so callers need not read it twice.

    Raises:
        ForgeError: RECIPE naming the file and the offending key or architecture.
    """
    config = read_config(root)
    native = _natively_implemented(config)
    if not native:
        _refuse_auto_map(config, f"{source}: config.json", hint=_FOREIGN_MODEL_HINT)
    if "tokenizer_config.json" in set(files):
        tokenizer_config = _read_json_object(root / "tokenizer_config.json")
        # forge's own model stands in for a native family's model, not for its tokenizer.
        hint = _NATIVE_TOKENIZER_HINT if native else _FOREIGN_MODEL_HINT
        _refuse_auto_map(tokenizer_config, f"{source}: tokenizer_config.json", hint=hint)
    _check_architectures_known(config, source)
    return config


_FOREIGN_MODEL_HINT = (
    "use a model whose architecture ships with transformers, or register a forge "
    "architecture plugin for it"
)
_NATIVE_TOKENIZER_HINT = (
    "forge implements this model itself, but its tokenizer class is repository code: give "
    "the folder a tokenizer transformers loads without it (a tokenizer.json) and remove "
    "`auto_map` from tokenizer_config.json (docs/models.md)"
)


def _refuse_auto_map(config: dict[str, Any], where: str, *, hint: str) -> None:
    if "auto_map" in config:
        classes = ", ".join(sorted(str(v) for v in _flatten(config["auto_map"])))
        raise recipe_error(
            f"{where} has an `auto_map` ({classes}): the model needs code from its repository, "
            "and forge never executes repository code",
            hint=hint,
        )


def _natively_implemented(config: dict[str, Any]) -> bool:
    """Whether forge's own model stands in for this config's repository classes."""
    from trtllm_forge.models.registry import REGISTRY

    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        return False
    name = architectures[0]
    return isinstance(name, str) and REGISTRY.knows(name) and REGISTRY.get(name).native


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flatten(item)]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _check_architectures_known(config: dict[str, Any], source: str) -> None:
    architectures = config.get("architectures")
    if not architectures:
        raise source_error(
            f"{source}: config.json has no `architectures` list, so the model class is unknown",
            hint='add e.g. "architectures": ["LlamaForCausalLM"] to config.json',
        )
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise source_error(f"{source}: config.json `architectures` must be a list of class names")
    # forge's own registry answers for every architecture forge converts, without
    # importing transformers (≈1 s) on the no-op rebuild path.
    unknown = [arch for arch in architectures if not _forge_knows(arch)]
    if unknown:
        known = _transformers_names()
        unknown = [arch for arch in unknown if arch not in known]
    if unknown:
        raise recipe_error(
            f"{source}: architecture {', '.join(unknown)} is not part of transformers; loading it "
            "would mean running the repository's own code, which forge never does",
            hint="upgrade transformers if the architecture is new, or use a supported model",
        )


def _forge_knows(architecture: str) -> bool:
    from trtllm_forge.models.registry import REGISTRY

    return REGISTRY.knows(architecture)


def _transformers_names() -> frozenset[str]:
    # dir() of transformers' lazy module lists every exported class without
    # importing torch or any modeling file (hasattr would import them).
    import transformers

    return frozenset(dir(transformers))


def check_index_complete(root: Path, files: Iterable[str], *, source: str) -> None:
    """Every shard named by a weight index must be a plain file name present in ``files``.

    Raises:
        ForgeError: SOURCE naming the missing shard, or one whose name escapes the folder.
    """
    present = set(files)
    for index_name in sorted(present):
        if not index_name.endswith((SAFETENSORS_INDEX_SUFFIX, PICKLE_INDEX_SUFFIX)):
            continue
        index = _read_json_object(root / index_name)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise source_error(f"{source}: {index_name} has no `weight_map` object")
        for shard in sorted({str(v) for v in weight_map.values()}):
            _check_plain_name(shard, index_name, source)
            if shard not in present:
                raise source_error(
                    f"{source}: {index_name} names shard {shard}, which is missing",
                    hint="the download is incomplete; re-run it (e.g. `hf download "
                    f"{source}`) or copy the missing file",
                )


def _check_plain_name(name: str, index_name: str, source: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or name.startswith(("/", "\\")) or ".." in parts or len(parts) != 1:
        raise ForgeError(
            ExitCode.SOURCE,
            f"{source}: {index_name} names shard {name!r}, which is not a file in the model folder",
            hint="weight indexes must name shards next to them; fix or regenerate the index",
        )
