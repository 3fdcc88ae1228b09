"""Make a single-rank forge engine directory an onnxruntime-genai model folder as it is.

onnxruntime-genai (``og.Model(folder)``) reads ``genai_config.json`` and the tokenizer
files beside it (onnxruntime-genai 0.18). forge's
graphs already use genai's value names (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.%d.key``, ``present.%d.key``, ``logits``), so the
config only points genai at the rank graph and says how its cache works:

* ``portable``: past and present are separate tensors (present = past ++ new), so
  ``past_present_share_buffer`` is false and genai feeds ``position_ids``;
* ``ort``: GroupQueryAttention writes into the buffer it reads, so the buffer is shared
  (genai allocates ``max_length`` slots once) and the graph has no ``position_ids``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    PAST_PREFIX,
    POSITION_IDS,
    PRESENT_PREFIX,
)

GENAI_CONFIG = "genai_config.json"
# What a tokenizer may consist of (HF fast / sentencepiece / BPE vocab files).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def genai_config(meta: dict[str, Any], hf_config: dict[str, Any]) -> dict[str, Any]:
    """The genai_config.json document of a single-rank engine (engine.json ``meta``)."""
    model, onnx, limits = meta["model"], meta["onnx"], meta["limits"]
    rank = onnx["ranks"][0]
    shared = onnx.get("profile") == "ort"
    graph_inputs = {value["name"] for value in rank["inputs"]}
    inputs = {
        "input_ids": INPUT_IDS,
        "attention_mask": ATTENTION_MASK,
        "past_key_names": f"{PAST_PREFIX}%d.key",
        "past_value_names": f"{PAST_PREFIX}%d.value",
    }
    if POSITION_IDS in graph_inputs:
        inputs["position_ids"] = POSITION_IDS
    eos = hf_config.get("eos_token_id")
    context = int(limits["max_seq_len"])
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": hf_config.get("bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": _pad_id(hf_config, eos),
            "vocab_size": int(model["vocab_size"]),
            "context_length": context,
            "decoder": {
                "filename": rank["model"],
                "session_options": {"log_id": "trtllm-forge", "provider_options": []},
                "head_size": int(model["head_size"]),
                "hidden_size": int(model["hidden_size"]),
                "num_attention_heads": int(model["num_heads"]),
                "num_hidden_layers": int(model["num_layers"]),
                "num_key_value_heads": int(model["num_kv_heads"]),
                "inputs": inputs,
                "outputs": {
                    "logits": LOGITS,
                    "present_key_names": f"{PRESENT_PREFIX}%d.key",
                    "present_value_names": f"{PRESENT_PREFIX}%d.value",
                },
            },
        },
        "search": {
            "max_length": context,
            "min_length": 0,
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": shared,
            "early_stopping": True,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
        },
    }


def _pad_id(hf_config: dict[str, Any], eos: Any) -> Any:
    pad = hf_config.get("pad_token_id")
    if pad is not None:
        return pad
    return eos[0] if isinstance(eos, list) else eos


def write_genai_folder(engine_dir: Path, meta: dict[str, Any], snapshot: Path) -> list[str]:
    """Write genai_config.json and copy the snapshot's tokenizer files into ``engine_dir``.

    Returns the files written. Only single-rank ONNX engines qualify (genai runs one graph).
    """
    if len(meta.get("onnx", {}).get("ranks", [])) != 1:
        return []
    hf_config = _generation_ids(snapshot)
    (Path(engine_dir) / GENAI_CONFIG).write_text(
        json.dumps(genai_config(meta, hf_config), indent=2) + "\n"
    )
    written = [GENAI_CONFIG]
    for name in TOKENIZER_FILES:
        source = Path(snapshot) / name
        if source.is_file():
            shutil.copyfile(source, Path(engine_dir) / name)
            written.append(name)
    return written


def _generation_ids(snapshot: Path) -> dict[str, Any]:
    """bos/eos/pad ids: generation_config.json overrides config.json, as transformers does."""
    ids: dict[str, Any] = {}
    for name in ("config.json", "generation_config.json"):
        path = Path(snapshot) / name
        if path.is_file():
            doc = json.loads(path.read_text())
            ids.update(
                {k: doc[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in doc}
            )
    return ids
