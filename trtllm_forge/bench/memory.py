"""Peak host memory while a scenario runs: a sampling thread reading this process's RSS.

ru_maxrss would only give the peak since the process started (model loading included),
so each scenario samples its own peak instead.
"""

from __future__ import annotations

import threading
from types import TracebackType


class RssPeak:
    """``with RssPeak() as peak: ...`` then ``peak.bytes``: the largest RSS seen."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

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
