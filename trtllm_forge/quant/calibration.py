"""Calibration data: text from the built-in corpus or a user file, cut into token windows.

Documents are tokenized with the model's own tokenizer, joined into one stream
(EOS between documents), and ``samples`` windows of ``seq_len`` tokens are drawn
at seeded random offsets. The same text, tokenizer, sizes and seed always give
the same windows, and :attr:`CalibrationData.digest` names them.

Two digests exist on purpose: :func:`source_digest` is cheap (file bytes plus the
sampling settings, no torch, no tokenizer) and is what a cache key uses before
anything runs; :attr:`CalibrationData.digest` hashes the token ids actually fed
to the model and goes into the artifact manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from trtllm_forge.errors import recipe_error

if TYPE_CHECKING:
    import torch

BUILTIN_NAME = "builtin"


@dataclass(frozen=True)
class CalibrationSpec:
    """What to calibrate on. ``file`` None means the built-in corpus."""

    file: Path | None = None
    samples: int = 64
    seq_len: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seq_len < 2:
            raise recipe_error(
                f"calibration needs samples >= 1 and seq_len >= 2 (got {self.samples}, {self.seq_len})"
            )


@dataclass(frozen=True)
class CalibrationData:
    """Token windows ``[samples, seq_len]`` (int64) and their provenance."""

    tokens: torch.Tensor
    digest: str
    source: str
    source_tokens: int

    def batches(self, batch_size: int = 1) -> list[torch.Tensor]:
        import torch

        return list(torch.split(self.tokens, batch_size, dim=0))


def builtin_corpus_path() -> Path:
    return Path(str(resources.files("trtllm_forge") / "data" / "calibration.jsonl"))


def _digest(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def source_digest(spec: CalibrationSpec) -> str:
    """Digest of the calibration text and sampling settings (cheap; for cache keys)."""
    path = spec.file or builtin_corpus_path()
    text = _read_bytes(path)
    settings = json.dumps({"samples": spec.samples, "seq_len": spec.seq_len, "seed": spec.seed})
    return _digest(blake3.blake3(text).digest() + settings.encode())


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise recipe_error(
            f"calibration file not found: {path}",
            hint="quantize.calibration.file is relative to the recipe; omit it for the built-in corpus",
        ) from None


def read_documents(path: Path | None = None) -> list[str]:
    """Documents of a ``.jsonl`` (one ``{"text": ...}`` per line) or ``.txt`` file.

    A ``.txt`` file is split into documents at blank lines. ``None`` reads the
    built-in corpus.
    """
    path = path or builtin_corpus_path()
    raw = _read_bytes(path).decode("utf-8", errors="replace")
    docs = _jsonl_documents(raw, path) if path.suffix == ".jsonl" else _txt_documents(raw)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise recipe_error(f"calibration file {path} holds no text")
    return docs


def _txt_documents(raw: str) -> list[str]:
    paragraphs, current = [], []
    for line in raw.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def _jsonl_documents(raw: str, path: Path) -> list[str]:
    docs = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise recipe_error(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise recipe_error(
                f'{path}:{number}: expected an object with a string "text" field',
                hint='each line of a .jsonl calibration file must look like {"text": "..."}',
            )
        docs.append(record["text"])
    return docs


def load_tokenizer(tokenizer_dir: Path) -> Any:
    """The model's tokenizer (never with remote code); unloadable: a source error."""
    from trtllm_forge.sources.tokenizer import load_tokenizer as load

    return load(tokenizer_dir, needed_for="calibration tokenizes text")


def token_stream(documents: list[str], tokenizer: Any) -> list[int]:
    """All documents' token ids, each followed by EOS (when the tokenizer has one)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in documents:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(int(eos))
    if not stream:
        raise recipe_error("calibration text tokenizes to nothing")
    return stream


def sample_windows(
    stream: list[int], *, samples: int, seq_len: int, seed: int, bos: int | None = None
) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens at seeded random offsets.

    A stream shorter than a window is repeated. With ``bos``, each window starts
    with it (the model saw BOS first in training) and holds ``seq_len - 1`` text tokens.
    """
    import torch

    body = seq_len - (1 if bos is not None else 0)
    data = torch.tensor(stream, dtype=torch.int64)
    if data.numel() < body + 1:
        data = data.repeat(body // data.numel() + 2)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - body + 1, (samples,), generator=gen)
    windows = torch.stack([data[s : s + body] for s in starts.tolist()])
    if bos is not None:
        windows = torch.cat([torch.full((samples, 1), bos, dtype=torch.int64), windows], dim=1)
    return windows


def _adds_bos(tokenizer: Any) -> int | None:
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    probe = tokenizer("a")["input_ids"]
    return int(bos) if probe and probe[0] == bos else None


def tokens_digest(tokens: torch.Tensor) -> str:
    """Digest naming exactly the token windows fed to the model."""
    import torch

    header = json.dumps(list(tokens.shape)).encode()
    return _digest(header + tokens.to(torch.int64).contiguous().numpy().tobytes())


def load_calibration(spec: CalibrationSpec, tokenizer_dir: Path) -> CalibrationData:
    """Tokenize the spec's text with the model's tokenizer and draw the windows."""
    source = str(spec.file) if spec.file else BUILTIN_NAME
    return _windows(read_documents(spec.file), tokenizer_dir, spec, source)


def from_texts(texts: list[str], tokenizer_dir: Path, spec: CalibrationSpec) -> CalibrationData:
    """Windows drawn from caller-given documents (spec's sizes and seed; its file is ignored)."""
    if not any(t.strip() for t in texts):
        raise recipe_error("calibration texts are empty")
    return _windows(texts, tokenizer_dir, spec, "texts")


def _windows(
    documents: list[str], tokenizer_dir: Path, spec: CalibrationSpec, source: str
) -> CalibrationData:
    tokenizer = load_tokenizer(tokenizer_dir)
    stream = token_stream(documents, tokenizer)
    tokens = sample_windows(
        stream, samples=spec.samples, seq_len=spec.seq_len, seed=spec.seed, bos=_adds_bos(tokenizer)
    )
    return CalibrationData(tokens, tokens_digest(tokens), source, len(stream))


def from_tokens(tokens: torch.Tensor) -> CalibrationData:
    """Wrap ready-made token windows (tests, API callers with their own data)."""
    import torch

    if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise recipe_error("calibration tokens must be an integer tensor [samples, seq_len]")
    tokens = tokens.to(torch.int64)
    return CalibrationData(tokens, tokens_digest(tokens), "tokens", int(tokens.numel()))
