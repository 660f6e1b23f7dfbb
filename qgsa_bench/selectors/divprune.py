"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
CVPR 2025).

Between encoder and LM, on the projected visual tokens: keep the subset that solves the Max-Min
Diversity Problem greedily, with cosine distance d(i, j) = 1 - cos(x_i, x_j). The first token is the one
farthest from its nearest neighbour (largest min distance); each further step adds the token whose
minimum distance to the tokens already kept is largest. Image-only, training-free, no attention needed.
Shapes: tokens (B, n, d_q); per-sample loop of k steps over an (n, n) distance matrix (float32).
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Selector, SelectState
from qgsa_bench.selectors.registry import register
from qgsa_bench.selectors.selection import Selection, pack


def max_min_diverse(x: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """x (n, d), valid (n,) -> the k indices chosen greedily for max-min cosine diversity, in pick order."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    dist = 1.0 - x @ x.T  # (n, n)
    dist = dist.masked_fill(~valid[None, :], float("inf")).masked_fill(~valid[:, None], float("-inf"))
    off = dist.clone()
    off.fill_diagonal_(float("inf"))
    first = int(off.min(dim=1).values.argmax())
    picked = [first]
    nearest = dist[first].clone()  # distance of every token to the kept set
    nearest[~valid] = float("-inf")
    nearest[first] = float("-inf")
    for _ in range(k - 1):
        nxt = int(nearest.argmax())
        picked.append(nxt)
        nearest = torch.minimum(nearest, dist[nxt])
        nearest[nxt] = float("-inf")
    return torch.tensor(picked, dtype=torch.long, device=x.device)


@register
class DivPrune(Selector):
    name = "divprune"
    paper = "DivPrune, Alvar et al., CVPR 2025"
    points = ("post-vision",)

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        tokens = state.cache.get("tokens")
        if tokens is None:
            tokens = state.cache["tokens"] = state.project(state.patches)  # (B, n, d_q)
        B, n, _ = tokens.shape
        order = torch.zeros(B, n, dtype=torch.long, device=tokens.device)
        for b in range(B):
            picked = max_min_diverse(tokens[b], state.valid[b], int(k[b]))
            rest = torch.ones(n, dtype=torch.bool, device=tokens.device)
            rest[picked] = False
            order[b] = torch.cat([picked, rest.nonzero().flatten()])
        indices, valid = pack(order, k)
        return Selection(indices, valid, k)
