"""Runner for the transformers reference: a Hugging Face model directory, greedy with its
own KV cache (no generate(): its stopping rules and logits processors are not timed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trtllm_forge.bench.memory import SampledDevice, device_use_for
from trtllm_forge.bench.runners.base import Limits
from trtllm_forge.engine.metadata import tool_version
from trtllm_forge.errors import recipe_error


class TransformersRunner(SampledDevice):
    name = "transformers"

    def __init__(self, model: Any, target: Path, *, device: str, threads: int | None) -> None:
        self.model = model
        self.target = str(target)
        self.device = device
        self.threads = threads
        config = model.config
        self.vocab_size = int(config.vocab_size)
        self.limits = Limits(max_seq_len=getattr(config, "max_position_embeddings", None))

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
    ) -> TransformersRunner:
        if not (Path(model_dir) / "config.json").is_file():
            raise recipe_error(
                f"{model_dir} is not a Hugging Face model directory (no config.json)",
                hint="--runtime transformers takes the model's directory (or a recipe)",
            )
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        device_use = device_use_for(device)  # the driver's count, as for the ORT runners
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=False
        )
        model = model.to(device).eval()  # type: ignore[arg-type,no-untyped-call,unused-ignore]
        runner = cls(model, Path(model_dir), device=device, threads=threads)
        runner.device_use = device_use
        return runner

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Iterator[list[int]]:
        from trtllm_forge.engine.hf_greedy import greedy_steps

        return greedy_steps(self.model, prompts, max_new_tokens, device=self.device)

    def close(self) -> None:
        super().close()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        self.model = None

    def versions(self) -> dict[str, str | None]:
        return {"transformers": tool_version("transformers"), "torch": tool_version("torch")}
