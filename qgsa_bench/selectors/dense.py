"""The dense references as selectors that keep everything, so every command runs them through the same
stages as any other selector.

dense         the model's own path: every patch through the model's connector (N / s^2 visual tokens).
dense-bypass  every patch through the QGSA module's W_vis, one visual token per patch (N tokens): the seed
              paper's accounting baseline, the cost its sparse pipelines are compared against.
"""

from __future__ import annotations

from qgsa_bench.selectors.base import Selector
from qgsa_bench.selectors.registry import register


@register
class Dense(Selector):
    name = "dense"
    paper = "the base model itself"
    points = ("post-vision",)
    keeps_all = True


@register
class DenseBypass(Selector):
    name = "dense-bypass"
    paper = "QGSA (the seed paper): every patch through W_vis, the accounting baseline"
    points = ("post-vision",)
    keeps_all = True
    patch_form = True
    uses_module = True
