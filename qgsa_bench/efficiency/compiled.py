"""Compiled runs: the same engine with its vision encoder and language model under `torch.compile`.

`--compile MODE` measures every pipeline twice in one sweep, eager and compiled (`{case}+{MODE}`), in the
same alternating rounds. MODE is torch.compile's: `default` (Inductor kernels), `reduce-overhead` (on a
GPU, the compiled graphs are also captured and replayed as CUDA graphs: the launch-bound regime of
batch-1 small models), `max-autotune`. The modules are compiled with `dynamic=True`, so another number
of visual tokens, prompt length, KV-cache length, batch or resolution reuses the compiled graphs
instead of recompiling on every call; the compilations that still happen during the timed rounds are
counted per case (`recompilations_timed`, from torch._dynamo's counters) and shown in the table. The
first run compiles, so compiled cases need at least one warm-up round. FLOPs are those of the eager
modules (the same arithmetic; fvcore cannot trace a compiled module).
"""

from __future__ import annotations

import copy

from qgsa_bench import QGSAError

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def check_compile(mode: str, warmup: int) -> None:
    if mode not in COMPILE_MODES:
        raise QGSAError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got '{mode}'")
    if mode != "none" and warmup < 1:
        raise QGSAError("--compile needs --warmup 1 or more: the first run of a compiled case compiles it")


def compiled_engine(engine, mode: str):
    """A copy of `engine` (run.stages.Engine) whose adapter runs torch.compile'd vision and LM layers (the
    layer-by-layer run calls them one by one, so each layer is compiled; the QGSA module, embeddings,
    connector and LM head stay eager: small). It shares the engine's generator; `.eager` is the engine it
    was made from."""
    import torch

    def compile_all(layers):
        return [torch.compile(layer, mode=mode, dynamic=True) for layer in layers]

    adapter = copy.copy(engine.adapter)
    adapter.vision_layers = compile_all(engine.adapter.vision_layers)
    adapter.lm = copy.copy(engine.adapter.lm)
    adapter.lm.layers = compile_all(engine.adapter.lm.layers)
    compiled = copy.copy(engine)
    compiled.adapter = adapter
    compiled.eager = engine
    return compiled


def compilations() -> int:
    """Graphs compiled so far in this process (torch._dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
