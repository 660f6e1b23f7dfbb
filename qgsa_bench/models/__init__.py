"""Model registry, shipped architecture presets and the per-family adapters."""

from qgsa_bench.models.registry import LoadedModel, available_models, load_model, load_preset

__all__ = ["LoadedModel", "available_models", "load_model", "load_preset"]
