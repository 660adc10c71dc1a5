"""Peak memory of a block of work: CUDA's allocator peak on GPU, the process's resident set on CPU."""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

import torch



def _rss_bytes() -> Optional[int]:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None


class PeakMemory:
    """Peak memory of a block: CUDA allocated bytes on GPU; on CPU the process RSS sampled every 10 ms.

    ``peak_bytes`` is None where it cannot be measured; ``kind`` says which of the two it is.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_rss"
        self.peak_bytes: Optional[int] = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = _rss_bytes()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            rss = _rss_bytes()
            if rss is not None and (self.peak_bytes is None or rss > self.peak_bytes):
                self.peak_bytes = rss

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._sampler.join()


def format_bytes(count: Optional[int]) -> str:
    if count is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return "n/a"
