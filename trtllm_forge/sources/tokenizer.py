"""The model's own tokenizer, loaded safely: never with remote code, and a tokenizer
that cannot be loaded (files from anyone: tokenizers raises KeyError, ValueError, …)
is a source error naming what needed it.

:func:`check_tokenizer_files` is the cheap half, run before any stage (issue 17 item 9:
a corrupt tokenizer.json used to surface at verify, after convert and build): every
tokenizer file of the folder is read within a size cap and its JSON parsed, and tokenizer
files a stage will tokenize with must include a tokenizer. It does not load
the vocabulary (a Gemma tokenizer.json is 33 MB; loading it on every ``forge plan``
would cost more than the rest of the plan), so a file that parses but that the
tokenizers library rejects for its content is still found at load time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trtllm_forge.errors import source_error
from trtllm_forge.userfiles import UnsafeFile, read_regular

# Any one of these is a tokenizer AutoTokenizer can build from (a fast tokenizer, a
# sentencepiece model, a BPE or WordPiece vocabulary).
LOADABLE_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
# Tokenizer files that are JSON documents holding one object.
JSON_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
)
# The largest published tokenizer.json files are tens of MB; a cap keeps a hostile file
# from being read into memory whole.
MAX_TOKENIZER_BYTES = 256 << 20
# The model kinds of the tokenizers library and the fields each cannot do without.
_MODEL_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "BPE": (("vocab", dict), ("merges", list)),
    "WordPiece": (("vocab", dict),),
    "WordLevel": (("vocab", dict),),
    "Unigram": (("vocab", list),),
}


def load_tokenizer(tokenizer_dir: Path, *, needed_for: str) -> Any:
    """``AutoTokenizer`` of ``tokenizer_dir``; ``needed_for`` completes the hint
    ("calibration tokenizes text", "verify tokenizes the prompts", …)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise source_error(
            f"cannot load the model's tokenizer from {tokenizer_dir}: "
            f"{type(exc).__name__}: {first_line}",
            hint=f"{needed_for} with the model's own tokenizer: the source must include a "
            "loadable one (tokenizer.json or tokenizer.model)",
        ) from None


def check_tokenizer_files(root: Path, names: Iterable[str], *, needed_for: str | None) -> None:
    """Refuse a folder whose tokenizer files are unreadable, or whose tokenizer files hold
    no tokenizer while ``needed_for`` (what will tokenize, or None when nothing will)
    needs one.

    Args:
        root: the model folder.
        names: the files forge takes from it (the snapshot's listing).
        needed_for: completes the hint, e.g. "verify tokenizes the prompts".

    Raises:
        ForgeError: SOURCE naming the file and what is wrong with it.
    """
    present = set(names)
    for name in JSON_FILES:
        if name in present:
            _check_json_file(Path(root) / name, needed_for)
    # A folder with tokenizer files but none a tokenizer loads from is a damaged copy. One
    # with no tokenizer files at all is not refused here: the checks run before `--until`
    # is known, and `forge build --until calibrate` of a weights-only folder is legitimate
    # (python -m bench builds synthetic checkpoints that way).
    partial = sorted(present.intersection(JSON_FILES))
    if needed_for is not None and partial and not present.intersection(LOADABLE_FILES):
        raise source_error(
            f"the model folder {root} has tokenizer files ({', '.join(partial)}) but no "
            f"tokenizer (none of {', '.join(LOADABLE_FILES)})",
            hint=f"{needed_for} with the model's own tokenizer: copy all its tokenizer files "
            "into the folder",
        )


def _check_json_file(path: Path, needed_for: str | None) -> None:
    problem = _json_problem(path)
    if problem is not None:
        raise source_error(
            f"the model's tokenizer cannot be loaded: {path} {problem}",
            hint=(f"{needed_for}; " if needed_for else "")
            + "replace the file with the model's original (re-download it)",
        )


def _json_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable JSON object fit for its role, or None."""
    try:
        data = json.loads(read_regular(path, limit=MAX_TOKENIZER_BYTES))
    except UnsafeFile as exc:
        return exc.reason
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    except RecursionError:
        return "nests too deeply to be a tokenizer file"
    if not isinstance(data, dict):
        return f"must hold a JSON object, found {type(data).__name__}"
    if path.name == "tokenizer.json":
        return _tokenizer_json_problem(data)
    return None


def _tokenizer_json_problem(data: dict[str, Any]) -> str | None:
    """The shape the tokenizers library needs of a tokenizer.json's ``model``."""
    model = data.get("model")
    if not isinstance(model, dict):
        return "has no `model` object"
    kind = model.get("type")
    if kind is None:  # the library infers an untagged model from its fields
        return None if "vocab" in model else "has a `model` without a `vocab`"
    if kind not in _MODEL_FIELDS:
        return f"has a `model` of unknown type {kind!r} (known: {', '.join(_MODEL_FIELDS)})"
    for field, kind_of in _MODEL_FIELDS[kind]:
        if not isinstance(model.get(field), kind_of):
            return f"has a {kind} `model` without a `{field}` {kind_of.__name__}"
    return None
