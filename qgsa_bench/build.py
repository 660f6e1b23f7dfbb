"""Build the pieces every command needs: device, base model, adapter, QGSA module, the run engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qgsa_bench.models import adapter_for
from qgsa_bench.models.base import VLMAdapter
from qgsa_bench.models.registry import LoadedModel, load_model
from qgsa_bench.qgsa.checkpoint import load_checkpoint
from qgsa_bench.qgsa.config import QGSAConfig
from qgsa_bench.qgsa.module import QGSAModule
from qgsa_bench.run.stages import Engine, Run
from qgsa_bench.runtime import resolve_device, resolve_dtype


@dataclass
class Built:
    loaded: LoadedModel
    adapter: VLMAdapter
    module: QGSAModule
    engine: Engine
    device: torch.device
    dtype: torch.dtype
    qgsa_weights: str  # "checkpoint:<path>" or "random-init (seed N)"

    def run(self, spec) -> Run:
        """A pipeline spec (`NAME[@POINT]`, or a parsed run.spec.Spec) bound to this model."""
        return self.engine.run(spec)


def new_module(adapter: VLMAdapter, config: QGSAConfig | None, seed: int) -> QGSAModule:
    """A randomly initialised QGSA module for this base (seeded, without touching the global RNG)."""
    if config is None:  # the family's default path for selected patches (LLaVA: its own projector)
        config = QGSAConfig(projection=adapter.default_projection)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return QGSAModule(adapter.d_v, adapter.d_q, config)


def build(model: str, weights: str = "auto", device: str = "auto", dtype: str = "auto",
          checkpoint: str | None = None, seed: int = 0, qgsa_config: QGSAConfig | None = None,
          attn_implementation: str = "sdpa", warn=None) -> Built:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kwargs = {"warn": warn} if warn is not None else {}
    loaded = load_model(model, weights, dev, dt, attn_implementation, seed, **kwargs)
    adapter = adapter_for(loaded)
    if checkpoint:
        module, _ = load_checkpoint(checkpoint, loaded.provenance())
        qgsa_weights = f"checkpoint:{checkpoint}"
    else:
        module = new_module(adapter, qgsa_config, seed)
        qgsa_weights = f"random-init (seed {seed})"
    module.to(dev, dt).eval()
    return Built(loaded, adapter, module, Engine(adapter, module, seed), dev, dt, qgsa_weights)
