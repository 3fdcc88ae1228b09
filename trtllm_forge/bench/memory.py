"""Peak memory while a scenario runs: a sampling thread reading this process's RSS, and on
a CUDA device the driver's count of memory in use.

ru_maxrss would only give the peak since the process started (model loading included),
so each scenario samples its own peak instead.
"""

from __future__ import annotations

import threading
from types import TracebackType


class RssPeak:
    """``with RssPeak() as peak: ...`` then ``peak.bytes``: the largest RSS seen."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.bytes = 0

    def _read(self) -> None:
        self.bytes = max(self.bytes, int(self._process.memory_info().rss))

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._read()

    def __enter__(self) -> RssPeak:
        self._read()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


class DeviceUse:
    """Memory in use on the CUDA device, as the driver counts it, sampled by a thread from
    before the model loads; ``peak_bytes()`` is the peak less what was in use at the start.

    ONNX Runtime and onnxruntime-genai allocate outside torch's caching allocator, so
    ``torch.cuda.max_memory_allocated`` cannot see their weights or KV cache; the driver's
    count (``cudaMemGetInfo``) sees every allocation. Each ``forge bench`` run is its own
    process on an otherwise idle device, so the difference is this process's use.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        import torch

        self._mem_get_info = torch.cuda.mem_get_info
        self._interval = interval_s
        self.baseline = self._used()  # the CUDA context is already up: excluded
        self._peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        free, total = self._mem_get_info()
        return int(total - free)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._used())

    def reset(self) -> None:
        """Start a new peak from what is in use now (the loaded model stays counted)."""
        self._peak = self._used()

    def peak_bytes(self) -> int:
        self._peak = max(self._peak, self._used())
        return self._peak - self.baseline

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class SampledDevice:
    """Device-memory methods for runners whose runtime allocates outside torch."""

    device_use: DeviceUse | None = None
    cuda_graph: bool | None = None

    def reset_device_peak(self) -> None:
        if self.device_use is not None:
            self.device_use.reset()

    def device_peak_bytes(self) -> int | None:
        return None if self.device_use is None else self.device_use.peak_bytes()

    def close(self) -> None:
        if self.device_use is not None:
            self.device_use.close()
            self.device_use = None


def device_use_for(device: str) -> DeviceUse | None:
    """A sampler when ``device`` is a CUDA device torch can see, started before the model
    loads; None otherwise (the runtime then says what the machine lacks)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return DeviceUse() if torch.cuda.is_available() else None
