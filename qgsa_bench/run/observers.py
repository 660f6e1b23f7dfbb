"""What watches the stages of a run (stages.Run.execute): nothing, a clock, or a FLOP counter.

An observer's `stage(name, fn, *args)` must return `fn(*args)`; `decode` runs (or, counting, counts) the
greedy steps after prefill. The clock marks each stage boundary (timing.StageClock: CUDA events without
host synchronisation in between, or perf_counter); the counter traces each stage with fvcore.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from qgsa_bench.efficiency.flops import FlopCount, count_flops
from qgsa_bench.efficiency.timing import StageClock


class Observer:
    """A plain run: every stage runs once, nothing is measured."""

    def start(self) -> None:
        pass

    def stage(self, name: str, fn, *args):
        return fn(*args)

    def decode(self, adapter, logits, state, new_tokens: int, stop: bool):
        """new_tokens - 1 cached steps after the prefill's token; `stop`: at each sample's end token."""
        return adapter.continue_greedy(logits, state, new_tokens, stop)

    def finish(self) -> None:
        pass


class Clock(Observer):
    """Marks the start, every stage boundary (with `stages`) and the end on one StageClock: intervals are
    [vision, select, prefill, decode], or with `stages=False` one region (nothing observed in between)."""

    def __init__(self, clock: StageClock, stages: bool = True):
        self.clock, self.stages = clock, stages

    def start(self) -> None:
        self.clock.mark()

    def stage(self, name: str, fn, *args):
        out = fn(*args)
        if self.stages:
            self.clock.mark()
        return out

    def finish(self) -> None:
        self.clock.mark()


def _traced(out):
    """The tensors of a stage's output that a FLOP count traces through."""
    if hasattr(out, "traced"):
        return out.traced()
    return out[0] if isinstance(out, tuple) else out  # prefill: (logits, state) -> logits


class FlopCounter(Observer):
    """fvcore FLOPs (multiply-adds) of each stage of the whole batch, traced on the stage's own function.

    `modules`: every nn.Module the stages call (their parameters are traced as parameters). Tracing runs a
    stage again, so draws of the random selectors are restored around it (`same_draws`); the vision stage's
    own run is restored too and the prefill's is not, as before this counter existed (the measured runs after
    a count then draw the same as in earlier releases). `lm_only`: count the LM stages only (the vision and
    select counts of depth-reduced copies are the full model's)."""

    def __init__(self, engine, modules, lm_only: bool = False):
        self.engine, self.modules, self.lm_only = engine, list(modules), lm_only
        self.counts: dict[str, FlopCount] = {}
        self._prefill = None

    def _count(self, fn, *args) -> FlopCount:
        return count_flops(lambda *a: _traced(fn(*a)), *args, modules=self.modules)

    def stage(self, name: str, fn, *args):
        if name == "prefill":
            out = fn(*args)
            self.counts[name] = self._count(fn, *args)
            self._prefill = (fn, args)
            return out
        restore_run = self.engine.same_draws() if name == "vision" else nullcontext()
        with restore_run:
            with self.engine.same_draws():
                self.counts[name] = FlopCount(0) if self.lm_only else self._count(fn, *args)
            if name == "vision":
                return fn(*args)
        return fn(*args)

    def decode(self, adapter, logits, state, new_tokens: int, stop: bool):
        """One cached step, counted as (prefill + step) - prefill: the step needs the prefill's cache."""
        fn, args = self._prefill

        def prefill_and_step(*a):
            first, state_ = fn(*a[:-1])
            return first, adapter.decode_step(a[-1], state_)  # both: the tracer drops unused outputs

        ids = torch.full((logits.shape[0],), adapter.pad_id, dtype=torch.long, device=logits.device)
        both = count_flops(prefill_and_step, *args, ids, modules=self.modules)
        self.counts["decode"] = both - self.counts["prefill"]
        return None
