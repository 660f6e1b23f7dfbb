"""Model registry, shipped architecture presets and the per-family adapters (base.py's interface)."""

from qgsa_bench.models.registry import LoadedModel, available_models, load_model, load_preset


def adapter_for(loaded: LoadedModel):
    """The family adapter of a loaded model (the one place that asks which family it is)."""
    if loaded.family == "llava":
        from qgsa_bench.models.llava import LlavaAdapter

        return LlavaAdapter(loaded)
    from qgsa_bench.models.idefics3 import Idefics3Adapter

    return Idefics3Adapter(loaded)


__all__ = ["LoadedModel", "adapter_for", "available_models", "load_model", "load_preset"]
