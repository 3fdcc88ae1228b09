"""What every benchmark shares: the repository's paths, the generated sections of the docs,
and how a model is scored on evaluation windows.

Each benchmark module imports these instead of keeping its own copy:

* ``ROOT``, ``DATA`` (downloaded and synthesized inputs, not committed), ``RESULTS``
  (committed results JSON) and ``DOCS``;
* ``write_section``: a doc's text between a begin and an end marker is generated, the
  rest is hand-written and kept byte for byte;
* ``forge_build``: a recipe built in this process through ``trtllm_forge.api``;
* ``eval_windows`` / ``stream_windows`` (token windows), ``nll`` / ``perplexity`` /
  ``window_perplexity`` (forge's own metrics, ``trtllm_forge.engine.metrics``, so a
  benchmark's perplexity is the one ``forge verify`` reports), ``hf_logits`` /
  ``fake_quant_logits`` (the logits functions they score) and ``Divergence``.

Heavy imports (torch, numpy, forge's engine) happen inside the functions, so importing
this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"

# bench.quant's model and evaluation text (``python -m bench.data`` writes both).
MODEL = DATA / "smollm2-135m"
EVAL_TEXT = DATA / "enwiki-eval.txt"
EVAL_BYTES = 200_000  # evaluation windows come from the first ~200 KB of the text

Logits = Callable[[Any], Any]  # token ids [T] -> float32 numpy logits [T, vocab]


# -- generated sections of the docs ----------------------------------------------------------


def put_section(text: str, begin: str, end: str, section: str) -> str:
    """``text`` with everything from ``begin`` through ``end`` replaced by ``section`` (which
    carries the markers itself); without both markers, ``section`` is appended after a blank
    line. Text outside the markers is kept byte for byte."""
    head, found, rest = text.partition(begin)
    if found and end in rest:
        return head + section + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_section(
    doc: Path, begin: str, end: str, body: str, *, new_doc: str = "# Performance\n"
) -> None:
    """Rewrite the ``begin``…``end`` section of ``doc`` as ``begin``, a newline, ``body``
    (ending in a newline) and ``end``; a missing doc starts as ``new_doc``."""
    text = doc.read_text() if doc.exists() else new_doc
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(put_section(text, begin, end, f"{begin}\n{body}{end}"))


def has_section(text: str, begin: str, end: str) -> bool:
    return begin in text and end in text.split(begin, 1)[1]


# -- forge builds ------------------------------------------------------------------------------


def forge_context(home: Path, progress: Any = None) -> Any:
    """A RunContext on the store ``home`` (FORGE_HOME), reporting to ``progress``."""
    from trtllm_forge.context import RunContext, Settings

    settings = Settings(home=home)
    return RunContext(settings) if progress is None else RunContext(settings, progress)


def forge_build(
    doc: dict[str, Any], recipe: Path, *, home: Path, until: str = "build", progress: Any = None
) -> Any:
    """Write the recipe ``doc`` to ``recipe`` and run forge's stages up to ``until`` in this
    process through the public ``trtllm_forge.api.build`` (cached stages are reused)."""
    import yaml

    from trtllm_forge import api

    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return api.build(recipe=recipe, until=until, ctx=forge_context(home, progress))


def checkpoint_of(calibrated: Any) -> Path:
    """The checkpoint folder of a calibrate artifact (a pass-through one: convert's)."""
    # trtllm_forge.api names no artifact's folders: the one place bench asks a stage module.
    from trtllm_forge.stages.build import checkpoint_dir

    return checkpoint_dir(calibrated)


def engine_of(built: Any) -> Path:
    """The engine folder of an ONNX build artifact."""
    from trtllm_forge.stages.build import engine_dir

    return engine_dir(built)


# -- evaluation windows ------------------------------------------------------------------------


def eval_windows(n: int, length: int, *, text: Path = EVAL_TEXT, model: Path = MODEL) -> Any:
    """``n`` windows of ``length`` tokens spread evenly over the first ~200 KB of ``text``
    (bench.quant's windows; every quantization benchmark that compares with its table uses
    them). SmolLM2's tokenizer adds no BOS, so windows are plain text tokens."""
    import torch

    from trtllm_forge.quant.calibration import load_tokenizer

    raw = text.read_bytes()[:EVAL_BYTES]
    cut = raw[: raw.rfind(b"\n") + 1].decode("utf-8")
    tokens = load_tokenizer(model)(cut, add_special_tokens=False)["input_ids"]
    stride = (len(tokens) - length) // max(n - 1, 1)
    if stride < length and n > 1:
        raise SystemExit(f"{n} windows of {length} tokens overlap in {len(tokens)} tokens")
    return torch.tensor([tokens[i * stride : i * stride + length] for i in range(n)])


def stream_windows(model: Path, text: Path, n: int, length: int) -> Any:
    """The first ``n`` x ``length`` tokens of ``text``'s documents as read for calibration
    (``trtllm_forge.quant.calibration.token_stream``), cut into ``n`` windows."""
    import torch

    from trtllm_forge.quant import calibration as calib

    tokens = calib.token_stream(calib.read_documents(text), calib.load_tokenizer(model))
    if len(tokens) < n * length:
        raise SystemExit(f"{text} has {len(tokens)} tokens, fewer than {n} x {length}")
    return torch.tensor(tokens[: n * length]).reshape(n, length)


# -- scoring -------------------------------------------------------------------------------------


def nll(logits: Any, ids: Any) -> Any:
    """Per-position next-token NLL (float64 numpy) of one window's float logits [T, vocab]."""
    from trtllm_forge.engine import metrics

    return metrics.next_token_nll(logits, ids.tolist())


def perplexity(parts: Sequence[Any]) -> float:
    """Perplexity over the NLLs of several windows taken together."""
    import numpy as np

    return float(math.exp(np.concatenate(list(parts)).mean()))


def window_perplexity(logits_of: Logits, windows: Any) -> float:
    """Perplexity of ``logits_of`` (``ids [T] -> numpy logits [T, vocab]``) on every window."""
    return perplexity([nll(logits_of(ids), ids) for ids in windows])


def hf_logits(model: Any, ids: Any) -> Any:
    """A transformers model's float32 logits of one window, as numpy on the host (the ids are
    moved to the model's device)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=ids[None].to(model.device)).logits[0]
        result: Any = out.float().cpu().numpy()
    return result


def fake_quant_logits(fake: Any) -> Logits:
    """forge's fake-quant (or plain checkpoint) forward as a logits function."""
    import torch

    def logits(ids: Any) -> Any:
        with torch.no_grad():
            return fake.logits(ids[None])[0].float().numpy()

    return logits


class Divergence:
    """How far one set of logits is from another, over every window: the largest
    |Δlogit|, the mean |Δlogit| and the fraction of positions whose argmax differs."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.count = 0
        self.argmax_differs = 0
        self.positions = 0

    def add(self, a: Any, b: Any) -> None:
        import numpy as np

        diff = np.abs(a - b)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.abs_sum += float(diff.sum(dtype=np.float64))
        self.count += diff.size
        self.argmax_differs += int((a.argmax(-1) != b.argmax(-1)).sum())
        self.positions += a.shape[0]

    def as_dict(self) -> dict[str, float]:
        return {
            "max_abs_logit": self.max_abs,
            "mean_abs_logit": self.abs_sum / max(self.count, 1),
            "argmax_differs": self.argmax_differs / max(self.positions, 1),
        }
