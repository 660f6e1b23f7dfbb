"""PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
Visual Redundancy Reduction", CVPR 2025).

The LM is split into stages; at the end of each stage a fraction of the remaining visual tokens is
dropped, ranked by the attention they receive from the last instruction token (the paper's light
attention: one query row) in the layer before the cut. The paper cuts LLaVA-1.5's 32 layers at 8, 16 and
24 with ratio lambda = 0.5 per stage; here the default cuts are depth/4, depth/2, 3 depth/4, and a budget
k (visual tokens after the last cut) sets lambda = (k / N)^(1/S) for S cuts, so stage j keeps
round(N lambda^j) (the last exactly k). Layer-averaged visual tokens are reported beside k.
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Point, Selector, SelectState, scaled_cuts
from qgsa_bench.selectors.registry import register


@register
class PyramidDrop(Selector):
    name = "pdrop"
    paper = "PyramidDrop, Xing et al., CVPR 2025"
    points = ("lm",)
    attention = "last"
    multi_stage = True

    def default_point(self, vision_depth: int, lm_depth: int) -> Point:
        return Point("lm", scaled_cuts((8, 16, 24), lm_depth))

    def scores(self, state: SelectState) -> torch.Tensor:
        return state.attention
