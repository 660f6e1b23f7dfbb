"""Wall-clock timing: CUDA events on GPU, time.perf_counter on CPU.

`Stopwatch` times one region (synchronising before and after: `qgsa eval`, `qgsa ask`); `StageClock`
marks the stage boundaries of one measured run with events and synchronises once at the end."""

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


class StageClock:
    """Stage boundaries of one run without bubbles: on GPU a CUDA event is recorded on the current stream
    at each `mark()` and the host synchronises once, when the times are read (`intervals_ms`), so the
    device runs the stages back to back as it would unobserved; on CPU `now()` is read at each mark."""

    def __init__(self, device: torch.device, event=None, synchronize=None):
        self.cuda = torch.device(device).type == "cuda"
        self._event = event or (lambda: torch.cuda.Event(enable_timing=True))
        self._synchronize = synchronize or torch.cuda.synchronize
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = self._event()
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(now())

    def intervals_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (one synchronize on GPU, here)."""
        if self.cuda:
            self._synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1000.0 for a, b in zip(self.marks, self.marks[1:])]
