"""Selectors at insertion point `tiles`: which tiles of a split image are encoded at all (models/views.py).

The global view is always encoded (first) and offers each tile the mean of its patch features inside the tile
(run/tiles.py `tile_state`); a selector keeps T tiles (the budget, counted in tiles), whose views are then
encoded; the others never are.

random-tiles  T tiles drawn uniformly without replacement: image- and question-blind (the baseline).
global-only   no tile: the global view alone (SmolVLM with image splitting off, laid out as an unsplit image);
              takes no budget. The cheapest input the model knows.
qgsa-tiles    QGSA's scorer (the seed paper, Eq. 1) with the question over the global view's patches; a tile's
              score is the mean of the scores of the patches inside it; top-T (budget T, or f_comp(q)'s k up
              to the image's tiles when none is given). The seed paper scores patches after the encoder; scoring
              the global view to choose tiles before encoding them is this project's placement (issue 19).
              Its scorer reads the global view's patch features after the encoder, the features a module
              trained at post-vision scores, so a post-vision checkpoint serves it as it is (Run's check).
              Trained with `qgsa train --insert tiles --fixed-k T` (the paper's Gumbel straight-through over
              tiles: each chosen tile's visual tokens carry its mask weight into the LM).
qgsa-tiles-max  the same scorer and module, a tile scored by the MAXIMUM of its patches' scores: a small object
              is one or two patches of the global view, whose scores the mean over a tile's patches dilutes
              (results/tiles/accuracy-shapes/tile_choice.md: with the module trained on 4 x the data the max
              ranks the referent's tile first for 53.6 % of one-object questions, the mean for 39.9 %). This
              project's variant, not the paper's.
"""

from __future__ import annotations

import torch

from qgsa_bench.selectors.base import Selector, SelectState
from qgsa_bench.selectors.baselines import Random
from qgsa_bench.selectors.registry import register
from qgsa_bench.selectors.selection import Selection


@register
class RandomTiles(Random):
    """`random`'s draw (k of each sample's valid items with `state.generator`) over the image's tiles."""

    name = "random-tiles"
    paper = "baseline (uniform sampling of tiles without replacement)"
    points = ("tiles",)
    patch_form = False


@register
class GlobalOnly(Selector):
    name = "global-only"
    paper = "baseline (SmolVLM's global view alone: image splitting off)"
    points = ("tiles",)
    keeps_no_tiles = True

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        """No tile: an empty Selection (B, 0)."""
        B = state.valid.shape[0]
        empty = torch.zeros(B, 0, dtype=torch.long, device=state.valid.device)
        return Selection(empty, empty.bool(), torch.zeros(B, dtype=torch.long, device=state.valid.device))


@register
class QGSATiles(Selector):
    name = "qgsa-tiles"
    paper = "QGSA (the seed paper)'s question-guided scorer, over the global view, choosing tiles"
    points = ("tiles",)
    question_guided = True
    uses_module = True

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        """Top-T tiles by `scores` through the QGSA module (QGSAModule.select_scores); with the module in training
        mode (`qgsa train --insert tiles`, temperature in `state.cache["tau"]`) the seed paper's Gumbel
        straight-through selection (Eq. 3-4) over the tiles, so that the answer's loss reaches the scorer through
        the chosen tiles' weights. A missing tile (an image with fewer) is never chosen."""
        module = state.module
        scores = self.scores(state).masked_fill(~state.valid, -1e4)
        tau = state.cache.get("tau")
        return module.select_scores(scores, state.q, k, module.config.tau if tau is None else tau, state.generator)

    def scores(self, state: SelectState) -> torch.Tensor:
        """(B, n) each tile's score from the scores s_i = scorer(q, v_i) of the global view's patches inside it,
        pooled by `pool` (their mean)."""
        V, where = state.cache["global_patches"], state.cache["patch_tiles"]  # (B, N_v, d_v), (B, N_v)
        patch_scores = state.module.scorer(state.q, V.to(state.q.dtype)).float()  # (B, N_v)
        n = state.valid.shape[1]
        inside = torch.nn.functional.one_hot(where.clamp(min=0), n).bool() & (where >= 0)[..., None]  # (B, N_v, n)
        return self.pool(patch_scores, inside)  # top-T: select

    @staticmethod
    def pool(patch_scores: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """patch_scores (B, N_v), inside (B, N_v, n) bool -> (B, n): the mean score of each tile's patches (0 for
        a tile holding none)."""
        weights = inside.float()
        return (weights * patch_scores[..., None]).sum(1) / weights.sum(1).clamp(min=1)


@register
class QGSATilesMax(QGSATiles):
    name = "qgsa-tiles-max"
    paper = "QGSA (the seed paper)'s question-guided scorer over the global view, a tile scored by its best patch"

    @staticmethod
    def pool(patch_scores: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """patch_scores (B, N_v), inside (B, N_v, n) bool -> (B, n): the largest score of each tile's patches
        (-1e4 for a tile holding none, never above a real tile)."""
        return patch_scores[..., None].masked_fill(~inside, -1e4).amax(dim=1)
