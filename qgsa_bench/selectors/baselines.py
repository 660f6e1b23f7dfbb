"""Baselines: random units, largest-norm units (any insertion point), and downsampling (the input).

random      k units drawn uniformly without replacement: image- and question-blind.
norm        the k units whose features have the largest L2 norm: image-only.
downsample  the whole image at a lower resolution whose dense path gives k visual tokens or fewer (the
            largest square grid not above k); VTC-Bench (Liao et al., 2025, "Are we using the right
            benchmark: an evaluation framework for visual token compression methods") reports it as a
            strong simple baseline. It runs the dense pipeline, so its k is a square (4, 9, 16, ...).
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import SelectState, Selector


class RandomUnits(Selector):
    name = "random"
    paper = "baseline (uniform sampling without replacement)"
    points = ("post-vision", "vision", "lm")

    def scores(self, state: SelectState) -> torch.Tensor:
        B, n = state.valid.shape
        return torch.rand(B, n, generator=state.generator, device=state.valid.device)


class NormUnits(Selector):
    name = "norm"
    paper = "baseline (feature norm)"
    points = ("post-vision", "vision", "lm")

    def scores(self, state: SelectState) -> torch.Tensor:
        return state.features.float().norm(dim=-1)


class Downsample(Selector):
    name = "downsample"
    paper = "VTC-Bench (Liao et al., 2025): image downsampling as a token-compression baseline"
    points = ("input",)
