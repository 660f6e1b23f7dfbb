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

`reduce-overhead` and the layer-by-layer run: CUDA-graph trees keep a graph's outputs in a memory pool that
the graph's next replay overwrites, and the layers of one stack share one compiled graph, so layer i + 1
would overwrite layer i's output, which it still reads as its residual ("accessing tensor output of
CUDAGraphs that has been overwritten by a subsequent run", seen on an H200 with torch 2.11:
results/h200/). Each compiled layer is therefore wrapped in `GraphStep`: every call begins a new CUDA-graph
step (`torch.compiler.cudagraph_mark_step_begin`) and its tensor outputs, and the keys and values it
appended to the KV cache, are copied out of the pool before the next call.
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


class GraphStep:
    """A compiled layer under `reduce-overhead`, called as the layer is (same arguments, same outputs):
    each call begins a new CUDA-graph step, and its tensor outputs (e.g. hidden states (B, L, d)) and the
    KV-cache entries of `cache_index` (transformers' cache layer `cache_index`: keys and values
    (B, heads, L_k, head_dim)) are copied out of the graph's memory pool, at the cost of one copy each.
    Attributes are the layer's (`layer.self_attn`, ...). Raises what the layer raises."""

    def __init__(self, compiled, cache_index: int | None = None):
        self._compiled = compiled
        self._cache_index = cache_index

    def __call__(self, *args, **kwargs):
        import torch
        from torch.utils._pytree import tree_map_only

        torch.compiler.cudagraph_mark_step_begin()
        out = tree_map_only(torch.Tensor, torch.clone, self._compiled(*args, **kwargs))
        if self._cache_index is not None:
            _own_cache_layer(kwargs, self._cache_index)
        return out

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def _own_cache_layer(kwargs: dict, index: int) -> None:
    """Copy cache layer `index`'s keys and values (what the layer just wrote) out of the CUDA-graph pool."""
    import torch

    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    layers = getattr(cache, "layers", None)
    if layers is None or index >= len(layers):
        return
    for name in ("keys", "values"):
        tensor = getattr(layers[index], name, None)
        if isinstance(tensor, torch.Tensor):
            setattr(layers[index], name, tensor.clone())


def compiled_engine(engine, mode: str):
    """A copy of `engine` (run.stages.Engine) whose adapter runs torch.compile'd vision and LM layers (the
    layer-by-layer run calls them one by one, so each layer is compiled; the QGSA module, embeddings,
    connector and LM head stay eager: small). It shares the engine's generator; `.eager` is the engine it
    was made from."""
    import torch

    def compile_all(layers, cache: bool):
        compiled = [torch.compile(layer, mode=mode, dynamic=True) for layer in layers]
        if mode != "reduce-overhead":
            return compiled
        return [GraphStep(layer, i if cache else None) for i, layer in enumerate(compiled)]

    adapter = copy.copy(engine.adapter)
    adapter.vision_layers = compile_all(engine.adapter.vision_layers, cache=False)
    adapter.lm = copy.copy(engine.adapter.lm)
    adapter.lm.layers = compile_all(engine.adapter.lm.layers, cache=True)
    compiled = copy.copy(engine)
    compiled.adapter = adapter
    compiled.eager = engine
    return compiled


def compilations() -> int:
    """Graphs compiled so far in this process (torch._dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
