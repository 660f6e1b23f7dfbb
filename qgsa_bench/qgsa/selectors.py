"""QGSA as a selector (the seed paper's scorer, Eq. 1, with the predicted budget, Eq. 2).

qgsa         typed without `@`: the paper's pipeline, after the encoder, over single patches (B, N, d_v)
             projected to the LM by the module's W_vis (or the model's connector, QGSAConfig.projection);
             `qgsa@POINT` keeps whole visual tokens at that point instead.
qgsa-vision  the same scorer inside the vision encoder (default after a quarter of its layers): the kept
             units go on through the encoder's remaining layers; trained with `qgsa train --insert vision:L`.
Both score the items' features (B, n, d) against the question embedding q (B, d_q) with the QGSA module
(`state.module`): top-k in eval mode, Gumbel straight-through at temperature tau in training mode (Eq. 3-4;
`state.cache` carries tau and budget_grad). Without a budget, k = f_comp(q)'s (Eq. 2), at most n.
Raises QGSAError (through the run) for a budget outside 1..n.
"""

from __future__ import annotations

from qgsa_bench.selectors.base import Point, Selector, SelectState
from qgsa_bench.selectors.registry import register
from qgsa_bench.selectors.selection import Selection


@register
class QGSA(Selector):
    name = "qgsa"
    paper = "QGSA (the seed paper): question-guided patch scorer with a predicted budget"
    points = ("post-vision", "vision")
    question_guided = True
    trainable = True
    patch_form = True
    uses_module = True

    def select(self, state: SelectState, k) -> Selection:
        """The QGSA module's own selection over the n items (QGSAModule.select); k None: f_comp(q)'s k."""
        module = state.module
        tau = state.cache.get("tau")
        return module.select(state.q, state.features.to(state.q.dtype), k=k,
                             tau=module.config.tau if tau is None else tau, generator=state.generator,
                             budget_grad=state.cache.get("budget_grad", True),
                             valid=None if bool(state.valid.all()) else state.valid)


@register
class QGSAVision(QGSA):
    name = "qgsa-vision"
    paper = "QGSA (the seed paper), its scorer moved into the vision encoder"
    points = ("vision",)
    patch_form = False

    def default_point(self, vision_depth: int, lm_depth: int) -> Point:
        return Point("vision", (max(1, vision_depth // 4),))
