"""Data sets: one loader per published format, all yielding the same `VQASample`."""

from qgsa_bench.data.registry import DATASETS, LoadedData, load_dataset
from qgsa_bench.data.types import VQASample

__all__ = ["DATASETS", "LoadedData", "VQASample", "load_dataset"]
