"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024).

In the LM at layer K (default 2): rank the visual tokens by the attention they receive from the last
prompt token in layer K-1, averaged over heads, and keep the top k; layers K.. (and their KV cache) see
only those. The paper states the budget as a ratio R of visual tokens pruned; here k = (1 - R) * N.
Shapes: attention (B, n) float32 over the visual tokens of the sequence. Raises QGSAError (via the
run) for K outside 1..depth-1 or k outside 1..n.
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Point, Selector, SelectState
from qgsa_bench.selectors.registry import register


@register
class FastV(Selector):
    name = "fastv"
    paper = "FastV, Chen et al., ECCV 2024"
    points = ("lm",)
    attention = "last"

    def default_point(self, vision_depth: int, lm_depth: int) -> Point:
        return Point("lm", (min(2, lm_depth - 1),))

    def scores(self, state: SelectState) -> torch.Tensor:
        return state.attention
