"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", ICML 2025). Training-free and question-guided.

At a few LM layers (LLaVA-1.5: 2, 6 and 15 of 32; here scaled to the depth), the question's text tokens
rate the visual tokens. Raters are the text tokens relevant to the image: those whose mean attention to
the visual tokens is at least the mean over all question tokens. A visual token's score is the
attention it receives from the raters, averaged over raters and heads; the top k are kept. Stages keep
a geometric sequence ending at the budget k (as pdrop). The paper sizes each stage by the rank of the
attention matrix and can recycle pruned tokens into a few merged ones; here the budget fixes the sizes
and no tokens are recycled (equal budgets with every other selector).
Shapes: text_attention (B, T, n) float32, text_valid (B, T).
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Point, Selector, SelectState, scaled_cuts
from qgsa_bench.selectors.registry import register


@register
class SparseVLM(Selector):
    name = "sparsevlm"
    paper = "SparseVLM, Zhang et al., ICML 2025"
    points = ("lm",)
    attention = "text"
    question_guided = True
    multi_stage = True

    def default_point(self, vision_depth: int, lm_depth: int) -> Point:
        return Point("lm", scaled_cuts((2, 6, 15), lm_depth))

    def scores(self, state: SelectState) -> torch.Tensor:
        att = state.text_attention  # (B, T, n)
        vis = state.valid[:, None, :].float()
        text = state.text_valid.float()  # (B, T)
        relevance = (att * vis).sum(-1) / vis.sum(-1).clamp(min=1)  # (B, T) mean attention to the image
        mean = (relevance * text).sum(1, keepdim=True) / text.sum(1, keepdim=True).clamp(min=1)
        raters = (relevance >= mean) & state.text_valid  # (B, T)
        w = raters.float()
        return (att * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)  # (B, n)
