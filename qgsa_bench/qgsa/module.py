"""The trainable QGSA module: patch scorer (Eq. 1), complexity estimator (Eq. 2), W_vis and W_p."""

from __future__ import annotations

import torch
from torch import nn

from qgsa_bench.qgsa.config import QGSAConfig
from qgsa_bench.qgsa.gumbel import gumbel_selection
from qgsa_bench.selectors.selection import Selection, gather_patches, topk_selection


class PatchScorer(nn.Module):
    """s_i = MLP([q; v_i; q * v_i]) after projecting q and v_i to d_h = min(d_q, d_v, 256) (Eq. 1)."""

    def __init__(self, d_v: int, d_q: int, d_h: int):
        super().__init__()
        self.proj_q = nn.Linear(d_q, d_h)
        self.proj_v = nn.Linear(d_v, d_h)
        self.mlp = nn.Sequential(  # two hidden layers with ReLU, scalar output
            nn.Linear(3 * d_h, d_h), nn.ReLU(),
            nn.Linear(d_h, d_h), nn.ReLU(),
            nn.Linear(d_h, 1),
        )

    def forward(self, q: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        hq = self.proj_q(q)[:, None, :].expand(-1, V.shape[1], -1)  # (B, N, d_h)
        hv = self.proj_v(V)  # (B, N, d_h)
        return self.mlp(torch.cat([hq, hv, hq * hv], dim=-1)).squeeze(-1)  # (B, N)


class ComplexityEstimator(nn.Module):
    """c = sigma(f_comp(q)); f_comp is a two-layer MLP with 256 hidden units (Eq. 2)."""

    def __init__(self, d_q: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_q, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(q).squeeze(-1))  # (B,)


class QGSAModule(nn.Module):
    def __init__(self, d_v: int, d_q: int, config: QGSAConfig | None = None):
        super().__init__()
        self.config = config or QGSAConfig()
        self.d_v, self.d_q = d_v, d_q
        self.d_h = min(d_q, d_v, self.config.d_h_max)
        self.scorer = PatchScorer(d_v, d_q, self.d_h)
        self.f_comp = ComplexityEstimator(d_q, self.config.fcomp_hidden)
        self.W_vis = nn.Linear(d_v, d_q)  # selected patches -> LM embedding space
        self.W_p = nn.Linear(d_v, self.config.align_dim)  # alignment head (L_align)
        # what an unselected patch becomes before the connector (config.fill): None = zero
        self.fill = nn.Parameter(torch.zeros(d_v)) if self.config.fill == "learned" else None

    def k_continuous(self, c: torch.Tensor) -> torch.Tensor:
        """k_cont = k_min + (k_max - k_min) * c, the budget before the floor of Eq. 2."""
        return self.config.k_min + (self.config.k_max - self.config.k_min) * c

    def budget(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k = floor(k_min + (k_max - k_min) * c): returns k (B,) long, k_cont (B,), c (B,)."""
        c = self.f_comp(q)
        k_cont = self.k_continuous(c)
        k = k_cont.detach().floor().long().clamp(self.config.k_min, self.config.k_max)
        return k, k_cont, c

    def select(self, q: torch.Tensor, V: torch.Tensor, k=None, tau: float | None = None,
               generator: torch.Generator | None = None, budget_grad: bool = True,
               valid: torch.Tensor | None = None) -> Selection:
        """Score the N patches of V (B, N, d_v) against q (B, d_q) and pick k of them.

        Training mode (self.training): Gumbel + straight-through (Eq. 3-4); eval: deterministic top-k.
        `k` overrides the predicted budget (fixed-k runs, baselines at the same k). `budget_grad=False`
        stops Eq. 4's gradient into f_comp (the rescaling by k_cont), so that f_comp learns from a direct
        budget target only (train --attr-budget / --suff-budget). `valid` (B, N): items that exist (the views of
        a split image, padded in a batch); the others are never picked. None: all.
        """
        scores = self.scorer(q, V.to(q.dtype))
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        return self.select_scores(scores, q, k, tau, generator, budget_grad)

    def select_scores(self, scores: torch.Tensor, q: torch.Tensor, k=None, tau: float | None = None,
                      generator: torch.Generator | None = None, budget_grad: bool = True) -> Selection:
        """`select` on scores already made (B, n) from the scorer (qgsa-tiles: a tile's mean patch score):
        top-k in eval mode, Gumbel straight-through (Eq. 3-4) in training mode; k None: f_comp(q)'s budget."""
        c = None
        if k is not None:  # an explicit k must fit (the selector raises otherwise); f_comp not run
            k_sel = torch.as_tensor(k, dtype=torch.long, device=q.device).expand(q.shape[0])
            k_cont = k_sel.to(q.dtype)
        else:  # a predicted budget larger than N (tiny images) takes every patch
            k_pred, k_cont, c = self.budget(q)
            k_sel = k_pred.clamp(max=scores.shape[1])
        if not self.training:
            selection = topk_selection(scores, k_sel)
        else:
            cfg = self.config
            k_rescale = k_cont if budget_grad else k_cont.detach()
            selection = gumbel_selection(scores, k_sel, k_rescale, cfg.tau if tau is None else tau, cfg.tau_sig_min,
                                         cfg.soft_mask_space, generator)
        selection.c = c
        return selection

    def project(self, V: torch.Tensor, selection: Selection) -> torch.Tensor:
        """W_vis on the selected patches: (B, k_max, d_q); padded slots are masked by selection.valid."""
        return self.W_vis(gather_patches(V.to(self.W_vis.weight.dtype), selection))

    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {"scorer": count(self.scorer), "f_comp": count(self.f_comp),
                 "W_vis": count(self.W_vis), "W_p": count(self.W_p)}
        if self.fill is not None:
            parts["fill"] = self.fill.numel()
        parts["total"] = sum(parts.values())
        return parts
