"""Runner for forge's own engines: an engine directory run by trtllm_forge.engine.runtime."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trtllm_forge.bench.memory import SampledDevice, device_use_for
from trtllm_forge.bench.runners.base import Limits
from trtllm_forge.engine.metadata import ENGINE_FILE, tool_version
from trtllm_forge.errors import recipe_error

if TYPE_CHECKING:
    from trtllm_forge.engine.runtime import OrtEngine


class ForgeRunner(SampledDevice):
    name = "forge"
    device = "cpu"

    def __init__(self, engine: OrtEngine, *, threads: int | None, device: str = "cpu") -> None:
        self.engine = engine
        self.device = device
        self.target = str(engine.engine_dir)
        self.vocab_size = engine.vocab_size
        self.threads = threads
        self.limits = Limits(engine.max_batch_size, engine.max_input_len, engine.max_seq_len)

    @classmethod
    def load(
        cls,
        engine_dir: Path,
        *,
        threads: int | None = None,
        device: str = "cpu",
        cuda_graph: bool | None = None,
    ) -> ForgeRunner:
        if not (Path(engine_dir) / ENGINE_FILE).is_file():
            raise recipe_error(
                f"{engine_dir} is not a forge engine directory (no {ENGINE_FILE})",
                hint="pass a built engine directory (forge build prints it) or a recipe; "
                "use --runtime genai or transformers for other model folders",
            )
        # The runtime pulls in onnx and torch (seconds): only once the directory is an engine.
        from trtllm_forge.engine.runtime import OrtEngine, ort_threads

        threads = ort_threads() if threads is None else threads
        device_use = device_use_for(device)  # before the weights reach the device
        on_cuda = device.startswith("cuda")
        graph = cuda_graph if on_cuda else False  # a CPU run never asks for the fixed step
        engine = OrtEngine.load(engine_dir, threads=threads, device=device, cuda_graph=graph)
        runner = cls(engine, threads=threads or None, device=device)
        runner.device_use = device_use
        runner.cuda_graph = bool(engine.bound and engine.bound.graphs) if on_cuda else None
        return runner

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Iterator[list[int]]:
        for step in self.engine.stream(prompts, max_new_tokens):
            yield step.tolist()

    def close(self) -> None:
        super().close()
        self.engine = None  # type: ignore[assignment]

    def versions(self) -> dict[str, str | None]:
        return {
            "onnxruntime": tool_version("onnxruntime"),
            "trtllm-forge": tool_version("trtllm-forge"),
        }
