"""Baselines: random units, largest-norm units (any insertion point), and downsampling (the input).

random      k units drawn uniformly without replacement (the k smallest of one uniform draw per unit):
            image- and question-blind. Typed without `@`, the seed paper's patch-level baseline (k patches).
norm        the k units whose features have the largest L2 norm: image-only (patch-level without `@`).
downsample  the whole image at a lower resolution whose dense path gives k visual tokens or fewer (the
            largest square grid not above k); VTC-Bench (Liao et al., 2025, "Are we using the right
            benchmark: an evaluation framework for visual token compression methods") reports it as a
            strong simple baseline. It runs the dense pipeline, so its k is a square (4, 9, 16, ...).
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Selector, SelectState
from qgsa_bench.selectors.registry import register
from qgsa_bench.selectors.selection import Selection, random_selection


@register
class Random(Selector):
    name = "random"
    paper = "baseline (uniform sampling without replacement)"
    points = ("post-vision", "vision", "lm")
    patch_form = True

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        """k (B,) of the n valid items of `state`, drawn with `state.generator` (one draw (B, n) per call)."""
        B, n = state.valid.shape
        return random_selection(B, n, k, state.valid.device, state.generator, state.valid)


@register
class Norm(Selector):
    name = "norm"
    paper = "baseline (feature norm)"
    points = ("post-vision", "vision", "lm")
    patch_form = True

    def scores(self, state: SelectState) -> torch.Tensor:
        return state.features.float().norm(dim=-1)


@register
class Downsample(Selector):
    name = "downsample"
    paper = "VTC-Bench (Liao et al., 2025): image downsampling as a token-compression baseline"
    points = ("input",)
