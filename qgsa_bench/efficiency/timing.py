"""Wall-clock timing: CUDA events (with synchronize) on GPU, time.perf_counter on CPU."""

from __future__ import annotations

import time

import torch


def now() -> float:
    """The CPU clock every Stopwatch reads (seconds); tests replace it with a fake clock."""
    return time.perf_counter()


class Stopwatch:
    """`with Stopwatch(device) as sw: ...` then `sw.ms` holds the elapsed milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.ms = float("nan")

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            torch.cuda.synchronize()
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = now()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            torch.cuda.synchronize()
            self.ms = self._start.elapsed_time(self._end)
        else:
            self.ms = (now() - self._t0) * 1000.0
