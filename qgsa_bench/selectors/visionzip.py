"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025).

At the vision output: keep the *dominant* tokens, those receiving the most attention in the last vision
layer run, plus a few *contextual* tokens that merge the rest by similarity. LLaVA's CLIP tower has a CLS
token and the paper ranks by the CLS query's attention; SigLIP (SmolVLM) has none, so the substitute here
is the attention a token receives averaged over every patch query (and heads), the same quantity the
paper uses for towers without CLS. Contextual merging: of a budget k, k_c = round(k * 10/64) (the paper's
54 + 10 of 64, at least 1 when k >= 2) go to contextual tokens: the remaining units are split into k_c
targets taken evenly in raster order; every other remaining unit joins the target whose features are most
similar (cosine), and each target becomes the mean of its group (per patch position within the unit).
Shapes: attention (B, n), patches (B, n, s^2, d_v); merged units (B, k_c, s^2, d_v) appended to the kept.
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Selector, SelectState
from qgsa_bench.selectors.registry import register
from qgsa_bench.selectors.selection import Selection, topk_selection

CONTEXT_SHARE = 10 / 64


def contextual_count(k: int) -> int:
    return 0 if k < 2 else max(1, round(k * CONTEXT_SHARE))


@register
class VisionZip(Selector):
    name = "visionzip"
    paper = "VisionZip, Yang et al., CVPR 2025"
    points = ("post-vision", "vision")
    attention = "received"

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        k_ctx = torch.tensor([contextual_count(int(x)) for x in k], device=k.device)
        scores = state.attention.float().masked_fill(~state.valid, float("-inf"))
        dominant = topk_selection(scores, k - k_ctx)
        dominant.merged, dominant.merged_from = self.merge(state, dominant, k_ctx)
        dominant.k_ctx = k_ctx
        return dominant

    def merge(self, state: SelectState, dominant: Selection, k_ctx: torch.Tensor):
        """((B, max k_c, s^2, d_v) contextual units (zeros where a sample has fewer), (B, max k_c, n) bool: the
        units each one averages, numbered in the image's frame)."""
        B, n, g, d = state.patches.shape
        out = state.patches.new_zeros(B, int(k_ctx.max()), g, d)
        members_of = torch.zeros(B, out.shape[1], n, dtype=torch.bool, device=state.valid.device)
        kept = torch.zeros(B, n, dtype=torch.bool, device=state.valid.device)
        kept.scatter_(1, dominant.indices, dominant.valid)
        for b in range(B):
            c = int(k_ctx[b])
            rest = (~kept[b] & state.valid[b]).nonzero().flatten()
            if c == 0 or rest.numel() == 0:
                continue
            targets = rest[torch.linspace(0, rest.numel() - 1, c, device=rest.device).round().long()]
            feats = torch.nn.functional.normalize(state.features[b].float(), dim=-1)
            assign = (feats[rest] @ feats[targets].T).argmax(dim=1)  # (r,) target of each remaining unit
            for j in range(c):
                members = rest[assign == j]
                group = torch.cat([members, targets[j:j + 1]]).unique()
                out[b, j] = state.patches[b, group].mean(dim=0)
                members_of[b, j, group] = True
        return out, members_of
