"""QGSA inside the vision encoder: the seed paper's scorer (Eq. 1) with the question, at vision:L.

The QGSA module scores the units' hidden states after vision layer L against the question embedding q;
the top k units continue through the rest of the encoder (training: Gumbel straight-through, Eq. 3-4,
as post-vision QGSA). Without a given budget k is f_comp(q)'s (Eq. 2), counted in visual tokens.
Shapes: features (B, n, d_v), q (B, d_q) -> scores (B, n).
"""

from __future__ import annotations

import torch

from qgsa_bench.qgsa.selector import Selection
from qgsa_bench.selectors.base import Point, SelectState, Selector


class QGSAVision(Selector):
    name = "qgsa-vision"
    paper = "QGSA (the seed paper), its scorer moved into the vision encoder"
    points = ("vision",)
    question_guided = True
    trainable = True

    def default_point(self, vision_depth: int, lm_depth: int) -> Point:
        return Point("vision", (max(1, vision_depth // 4),))

    def select(self, state: SelectState, k) -> Selection:
        """The QGSA module's own selection over the units (QGSAModule.select): top-k in eval mode, Gumbel
        straight-through at temperature tau in training mode; k None: f_comp(q)'s budget (Eq. 2)."""
        module = state.module
        tau = state.cache.get("tau")
        return module.select(state.q, state.features.to(state.q.dtype), k=k,
                             tau=module.config.tau if tau is None else tau, generator=state.generator,
                             budget_grad=state.cache.get("budget_grad", True))
