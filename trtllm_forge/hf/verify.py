"""verify for ``build.backend: hf``: load the folder through a real loader, then the same
metrics and gates as an engine.

* compressed-tensors: transformers with the compressed-tensors library (decompressed
  on the CPU) — exactly what a user's ``from_pretrained`` does;
* ModelOpt format: :mod:`trtllm_forge.hf.modelopt_loader`, forge's reader that shares no
  code with the writer (nothing in transformers reads the format).

The candidate and the reference are both transformers models, so greedy generation and
teacher-forced logits use the reference's own helpers, through the same bounded-memory
comparison as an engine (engine/compare.py): the folder's model's logits are spilled to
disk block by block and it is freed before the reference loads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.compare import Candidate, Inputs, compare
from trtllm_forge.hf.reader import describe
from trtllm_forge.sources.policy import read_config

_NO_PROGRESS = NullProgress()
GREEDY_BATCH = 8  # prompts decoded together, by the reference and the folder's model alike


def load_folder_model(folder: Path) -> Any:
    """The folder's model on the CPU (float32, unless the format's compressed-tensors
    decompression needs another dtype), through the loader its format has."""
    import torch

    info = describe(folder)
    if info.format == "modelopt":
        from trtllm_forge.hf.modelopt_loader import load_modelopt_model

        return load_modelopt_model(folder)
    import transformers

    from trtllm_forge.quant.records import FORMATS, CompressedTensors

    # Some formats decompress only in one dtype (the format record's load_dtype).
    mapping = FORMATS[info.quant_algo].compressed_tensors if info.quant_algo in FORMATS else None
    load = mapping.load_dtype if isinstance(mapping, CompressedTensors) else None
    dtype = getattr(torch, load) if load else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.train(False)
    return model


def folder_candidate(folder: Path, description: str, inputs: Inputs) -> Candidate:
    """The folder's model as verify's candidate: transformers' own forward, greedy steps
    batched as the reference's, logits block by block like the reference's."""
    from trtllm_forge.engine import streaming
    from trtllm_forge.engine.hf_greedy import greedy_batched

    def blocks(model: Any, tokens: Sequence[int], window: int, vocab: int) -> Iterator[Any]:
        block = streaming.block_tokens(vocab, window, streaming.REFERENCE_BLOCK_BYTES)
        return streaming.reference_blocks(model, tokens, window, block)

    return Candidate(
        f"{description} folder",
        load=lambda: load_folder_model(folder).to(inputs.device),
        generate=lambda model, prompts, new: greedy_batched(
            model, prompts, new, inputs.batch_size, device=inputs.device
        ),
        blocks=blocks,
    )


def verify_hf_folder(
    *,
    folder: Path,
    reference_dir: Path,
    prompts: Sequence[str],
    texts: Sequence[str],
    max_new_tokens: int,
    max_text_tokens: int,
    gates: Mapping[str, float | None],
    out_dir: Path,
    progress: Progress = _NO_PROGRESS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Compare the folder's model with the reference in bounded memory (the folder's
    model's logits spilled, then the reference loaded: engine/compare.py); write the reports;
    the verify stage's JSON summary, with the folder's description."""
    from trtllm_forge.engine.verify import check_gates, finish, require_device, summary, tokenized

    check_gates(gates)
    require_device(device, "hf")
    prompt_ids, text_ids, lengths = tokenized(reference_dir, prompts, texts, max_text_tokens)
    info = describe(folder)
    config = read_config(Path(reference_dir))
    inputs = Inputs(
        prompt_ids,
        text_ids,
        max_new_tokens,
        window=int(config.get("max_position_embeddings") or 1 << 30),
        batch_size=GREEDY_BATCH,
        device=device,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    comparison = compare(
        Path(reference_dir),
        folder_candidate(Path(folder), info.format, inputs),
        inputs,
        spill_dir=Path(out_dir),
        progress=progress,
    )
    result = finish(
        comparison,
        inputs,
        gates=gates,
        described={"backend": "hf", **info.to_dict()},
        text_lengths=lengths,
        out_dir=Path(out_dir),
    )
    return {**summary(result), "folder": info.to_dict()}


def verify_build(*, engine_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """The verify stage's call, as for an engine: the build artifact holds the folder
    (``hf/``) where an engine build holds ``engine/``."""
    from trtllm_forge.hf.names import HF_DIR

    return verify_hf_folder(folder=Path(engine_dir).parent / HF_DIR, **kwargs)
