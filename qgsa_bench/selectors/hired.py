"""HiRED (Arif et al., "HiRED: Attention-Guided Token Dropping for Efficient Inference of High-Resolution
Vision-Language Models", AAAI 2025), on SmolVLM's split input (tiles + a global view; run/view_select.py).

Training-free, after the encoder (insertion point `post-vision`), with a budget of k visual tokens over all
views of an image:
1. Budget allocation. The global view (the paper's "full image") gets alpha * k; the rest, (1 - alpha) * k, is
   shared among the tiles (the paper's sub-images) in proportion to each tile's *visual content score*: the
   share of the global view's attention, in an initial vision layer, that falls on the global view's patches
   inside the tile (the paper reads the CLS token's attention in the first ViT layer). Each view holds at most
   its n_v visual tokens; what a full view cannot hold goes to the others in the same proportions.
2. Token dropping. Within each view, its allocated number of units with the highest *feature importance*:
   the attention they receive in the view's own last vision layer (the paper: the CLS token's in the final
   layer).
SigLIP (SmolVLM's encoder) has no CLS token; as this repository's VisionZip (selectors/visionzip.py) does, a
patch's attention is the attention it receives averaged over every patch query and head of its view, in both
phases. Choices of this implementation: alpha = 0.5 (`ALPHA`; the paper leaves it a parameter); allocation by
largest remainder, so that exactly k tokens are kept (the paper floors each share, leaving up to one token per
tile unspent; every selector here keeps exactly its budget); a tile is the global view's patches whose centres
fall inside it (models/views.tile_of_patches). On one view (no split) HiRED is the top-k units by last-layer
attention. Shapes: attention (B, n) over the joint frame (view j's unit u is item j * n_v + u), content
attention (B, N_v) over the global view's patches.
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Selector, SelectState
from qgsa_bench.selectors.registry import register
from qgsa_bench.selectors.selection import Selection, pack, topk_selection

ALPHA = 0.5  # the global view's share of the budget


def allocate(weights: torch.Tensor, k: int, cap: int) -> list[int]:
    """k tokens over views in proportion to `weights` (V,) >= 0, at most `cap` each, summing to exactly k (largest
    remainder; a full view's excess shared by the others in proportion, evenly where they all weigh 0). Raises
    ValueError when k > V * cap."""
    V = weights.shape[0]
    if k > V * cap:
        raise ValueError(f"{k} tokens do not fit in {V} views of {cap}")
    w = weights.double().clamp(min=0)
    counts = torch.zeros(V, dtype=torch.long)
    free = torch.ones(V, dtype=torch.bool)
    left = k
    while True:
        if not free.any():
            return counts.tolist()
        share = torch.where(free, w, torch.zeros_like(w))
        share = share / share.sum() if share.sum() > 0 else free.double() / free.sum()
        ideal = share * left
        over = free & (ideal >= cap)
        if not over.any():
            break
        counts[over] = cap
        left -= cap * int(over.sum())
        free &= ~over
    base = ideal.floor().long()
    rest = left - int(base.sum())
    order = (ideal - base).masked_fill(~free, -1).argsort(descending=True)
    base[order[:rest]] += 1
    return (counts + torch.where(free, base, torch.zeros_like(base))).tolist()


@register
class HiRED(Selector):
    name = "hired"
    paper = "HiRED, Arif et al., AAAI 2025"
    points = ("post-vision",)
    attention = "received"
    content_layer = 1  # the vision layer whose attention scores each tile's content (an initial layer)

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        """k (B,) visual tokens over all views: allocated by the global view's content attention, then the top
        units of each view by its own last-layer attention."""
        scores = state.attention.float().masked_fill(~state.valid, float("-inf"))
        if "view_of" not in state.cache:  # one view: nothing to allocate
            return topk_selection(scores, k)
        n_v, views = state.cache["units_per_view"], state.cache["views"]
        B, n = scores.shape
        order = torch.zeros(B, n, dtype=torch.long, device=scores.device)
        for b in range(B):
            budgets = allocate(self.weights(state, b, views[b]), int(k[b]), n_v)
            picked = [j * n_v + scores[b, j * n_v: (j + 1) * n_v].topk(c).indices for j, c in enumerate(budgets)]
            picked = torch.cat(picked)
            rest = torch.ones(n, dtype=torch.bool, device=scores.device)
            rest[picked] = False
            order[b] = torch.cat([picked, rest.nonzero().flatten()])
        indices, valid = pack(order, k)
        return Selection(indices, valid, k, scores=scores)

    @staticmethod
    def weights(state: SelectState, b: int, n_views: int) -> torch.Tensor:
        """(n_views,) each view's claim on the budget: tiles (1 - ALPHA) x their content score, the global view
        ALPHA (an unsplit image: the global view alone)."""
        if n_views == 1:
            return torch.ones(1)
        attention = state.cache["content_attention"][b].float().cpu()  # (N_v,) the global view's patches
        tiles = state.cache["patch_tiles"][b].cpu()
        content = torch.zeros(n_views - 1).index_add_(0, tiles, attention)
        content = content / content.sum() if content.sum() > 0 else torch.full_like(content, 1 / content.numel())
        return torch.cat([(1 - ALPHA) * content, torch.tensor([ALPHA])])
