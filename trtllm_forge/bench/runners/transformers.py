"""Runner for the transformers reference: a Hugging Face model directory, greedy with its
own KV cache (no generate(): its stopping rules and logits processors are not timed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trtllm_forge.bench.runners.base import Limits
from trtllm_forge.engine.metadata import tool_version
from trtllm_forge.errors import recipe_error


class TransformersRunner:
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
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=False
        )
        model = model.to(device).eval()  # type: ignore[arg-type,no-untyped-call,unused-ignore]
        return cls(model, Path(model_dir), device=device, threads=threads)

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Iterator[list[int]]:
        import torch

        longest = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), longest), dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding, as the engines do
            ids[row, longest - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, longest - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.no_grad():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
            )
            for step in range(max_new_tokens):
                token = out.logits[:, -1].argmax(dim=-1)
                yield token.tolist()  # .tolist() waits for the device: the step is done
                if step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=token[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )

    def reset_device_peak(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def device_peak_bytes(self) -> int | None:
        if not self.device.startswith("cuda"):
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(self.device))

    def versions(self) -> dict[str, str | None]:
        return {"transformers": tool_version("transformers"), "torch": tool_version("torch")}
