"""Runner for onnxruntime-genai model folders (genai_config.json + ONNX model + tokenizer)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_forge.bench.memory import SampledDevice, device_use_for
from trtllm_forge.bench.runners.base import Limits
from trtllm_forge.engine.metadata import tool_version
from trtllm_forge.errors import dependency_error, recipe_error

GENAI_CONFIG = "genai_config.json"


class GenaiRunner(SampledDevice):
    name = "genai"

    def __init__(
        self, og: Any, model: Any, target: Path, config: dict[str, Any], device: str
    ) -> None:
        self._og = og
        self.device = device
        self.model = model
        self.target = str(target)
        self.threads: int | None = None  # genai_config's session options decide
        decoder = config.get("model", {})
        self.vocab_size = int(decoder.get("vocab_size", 0))
        self.pad_token_id = int(decoder.get("pad_token_id", 0))
        context = decoder.get("context_length") or config.get("search", {}).get("max_length")
        self.limits = Limits(max_seq_len=int(context) if context else None)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu", cuda_graph: bool | None = None) -> GenaiRunner:
        """``device`` cuda runs the folder on genai's CUDA provider whatever its config names;
        a folder whose config names cuda (the builder's ``-e cuda``) runs there anyway.
        ``cuda_graph`` sets the CUDA provider's ``enable_cuda_graph`` (None: the config's)."""
        config_path = Path(folder) / GENAI_CONFIG
        if not config_path.is_file():
            raise recipe_error(
                f"{folder} is not an onnxruntime-genai model folder (no {GENAI_CONFIG})",
                hint="--runtime genai takes a folder written by the onnxruntime-genai model "
                "builder or a forge engine that carries genai_config.json",
            )
        try:
            import onnxruntime_genai as og  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            raise dependency_error(
                "onnxruntime-genai is not installed",
                hint="pip install 'trtllm-forge[runtimes]' (or onnxruntime-genai)",
            ) from None
        config = json.loads(config_path.read_text())
        device = "cuda" if device.startswith("cuda") or _names_cuda(config) else "cpu"
        device_use = device_use_for(device)
        model = og.Model(_model_config(og, folder, device, cuda_graph))
        runner = cls(og, model, Path(folder), config, device)
        runner.device_use = device_use
        if device == "cuda":
            runner.cuda_graph = bool(cuda_graph) if cuda_graph is not None else _graphs_on(config)
        return runner

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Iterator[list[int]]:
        longest = max(len(p) for p in prompts)
        ids = np.full((len(prompts), longest), self.pad_token_id, np.int32)
        # Shorter prompts are left-padded with pad_token_id, which genai masks; its padded rows
        # may decode differently from forge's (positions), but do the same work to time.
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = prompt
        params = self._og.GeneratorParams(self.model)
        total = longest + max_new_tokens
        # min_length = max_length: an end-of-sequence token does not stop the timed run.
        params.set_search_options(
            max_length=total, min_length=total, batch_size=len(prompts), do_sample=False
        )
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(ids)
        for _ in range(max_new_tokens):
            generator.generate_next_token()
            yield [int(t) for t in np.asarray(generator.get_next_tokens()).reshape(-1)]

    def close(self) -> None:
        """Free genai's model before the interpreter exits: onnxruntime-genai aborts the
        process ("terminate called without an active exception") when its CUDA model is
        still alive at exit (seen on the GPU machine, onnxruntime-genai-cuda 0.18)."""
        import gc

        super().close()
        self.model = None
        gc.collect()

    def versions(self) -> dict[str, str | None]:
        return {"onnxruntime-genai": tool_version("onnxruntime-genai")}


def _names_cuda(config: dict[str, Any]) -> bool:
    session = config.get("model", {}).get("decoder", {}).get("session_options", {})
    return any("cuda" in entry for entry in session.get("provider_options", []))


def _graphs_on(config: dict[str, Any]) -> bool:
    session = config.get("model", {}).get("decoder", {}).get("session_options", {})
    entries = [e.get("cuda", {}) for e in session.get("provider_options", [])]
    return any(str(e.get("enable_cuda_graph", "0")) == "1" for e in entries)


def _model_config(og: Any, folder: Path, device: str, cuda_graph: bool | None = None) -> Any:
    """The folder's config, with genai's CUDA provider as the only one on cuda."""
    config = og.Config(str(folder))
    if device == "cuda":
        config.clear_providers()
        config.append_provider("cuda")
        if cuda_graph is not None:
            config.set_provider_option("cuda", "enable_cuda_graph", "1" if cuda_graph else "0")
    return config
