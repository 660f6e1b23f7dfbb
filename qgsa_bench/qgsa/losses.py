"""The training objective of the seed paper (Eq. 6-9, Algorithm 1). Each function returns a scalar.

L = lambda1 L_cs + lambda2 L_align + lambda3 L_sparse + L_entropy + L_kvar + L_qlen, where the last
three already carry their coefficients (-0.01, -0.5, -0.3) as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_selection(logp_sparse: torch.Tensor, logp_random: torch.Tensor) -> torch.Tensor:
    """L_cs = mean_b [ -log P(a | V_sparse, q) + log P(a | V_rand, q) ]   (Eq. 6)."""
    return (-logp_sparse + logp_random).mean()


def alignment(patch_proj: torch.Tensor, mask: torch.Tensor, noun_emb: list[torch.Tensor]) -> torch.Tensor:
    """L_align = sum_n -(1/k) sum_i m_i cos(W_p v_i, phi(n))   (Eq. 7), averaged over samples with nouns.

    patch_proj (B, k_max, D) = W_p v_i of the selected patches; mask (B, k_max) the straight-through
    mask values at those patches (0 on padding), so the scorer gets gradient too; noun_emb[b] (n_b, D).
    Samples without nouns contribute nothing; with no nouns in the batch the loss is 0.
    """
    terms = []
    for b, nouns in enumerate(noun_emb):
        if nouns.shape[0] == 0:
            continue
        cos = F.cosine_similarity(patch_proj[b][:, None, :], nouns[None, :, :].to(patch_proj), dim=-1)  # (k, n)
        k = mask[b].detach().sum().clamp(min=1.0)
        terms.append(-(mask[b][:, None] * cos).sum() / k)
    return torch.stack(terms).mean() if terms else patch_proj.sum() * 0.0


def sparsity(mask_sum: torch.Tensor, n_patches: int) -> torch.Tensor:
    """L_sparse = mean_b ||m_b||_1 / N   (Eq. 8)."""
    return (mask_sum / n_patches).mean()


def entropy(scores: torch.Tensor, tau: float, coef: float = -0.01) -> torch.Tensor:
    """L_entropy = -0.01 * mean_b H(softmax(s_b / tau)): rewards non-uniform scores."""
    p = torch.softmax(scores / tau, dim=-1)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
    return coef * h.mean()


def budget_variance(c: torch.Tensor, coef: float = -0.5) -> torch.Tensor:
    """L_kvar = -0.5 * Var_b(c_b) (population variance: 0 for a batch of one)."""
    return coef * c.var(unbiased=False)


def length_correlation(lengths: torch.Tensor, c: torch.Tensor, coef: float = -0.3) -> torch.Tensor:
    """L_qlen = -0.3 * corr(|Q_b|, c_b); 0 where the correlation is undefined (B < 2 or a constant)."""
    x = lengths.to(c.dtype) - lengths.to(c.dtype).mean()
    y = c - c.mean()
    denom = x.norm() * y.norm()
    if c.numel() < 2 or float(denom.detach()) < 1e-12:
        return c.sum() * 0.0
    return coef * (x * y).sum() / denom


def attribution_targets(adapter, V: torch.Tensor, questions: list[str], answers: list[str]) -> torch.Tensor:
    """Not in the paper. How much each patch helps the frozen base answer, read off the dense path:
    g_i = d log P(a | connector(V * m), q) / d m_i at m = 1 (gradient x input for a per-patch gate),
    normalised to a distribution p*_i = relu(g_i) / sum_j relu(g_j) (B, N). Deterministic for a frozen base."""
    m = torch.ones(V.shape[:2], dtype=V.dtype, device=V.device, requires_grad=True)
    with torch.enable_grad():
        tokens = adapter.connect(V * m[..., None])
        logp = adapter.answer_logprob(adapter.build_inputs(tokens, questions), answers).sum()
        (g,) = torch.autograd.grad(logp, m)
    g = g.clamp(min=0)
    return g / g.sum(dim=1, keepdim=True).clamp(min=1e-12)


def attribution(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_attr = mean_b CE(p*_b, softmax(s_b)): the scorer's distribution over patches follows p*."""
    return -(targets * torch.log_softmax(scores.float(), dim=1)).sum(dim=1).mean()


def attribution_budget(targets: torch.Tensor, cover: float, k_min: int, k_max: int) -> torch.Tensor:
    """Not in the paper. k*_b: the fewest patches whose p* mass reaches `cover`, clamped to [k_min, k_max]."""
    cumulative = targets.sort(dim=1, descending=True).values.cumsum(dim=1)
    k_star = (cumulative < cover).sum(dim=1) + 1
    return k_star.clamp(k_min, k_max).to(targets.dtype)


def budget_grid(k_min: int, k_max: int) -> list[int]:
    """k_min, 2 k_min, 4 k_min, ... below k_max, then k_max: the budgets sufficient_budget tries."""
    grid, k = [], k_min
    while k < k_max:
        grid.append(k)
        k *= 2
    return grid + [k_max]


@torch.no_grad()
def sufficient_budget(adapter, groups: torch.Tensor, V: torch.Tensor, questions: list[str], answers: list[str],
                      targets: torch.Tensor, grid: list[int], tolerance: float) -> torch.Tensor:
    """Not in the paper. k*_b: the smallest k in `grid` whose top-k patches by p* (targets), alone through the
    base's own connector (the others zeroed; `groups` (N/s^2, s^2) the patches of each connector token),
    keep log P(a | q) within `tolerance` nats of the dense path's; grid[-1] when none does. A budget
    target that asks "how much of the image does this answer need", where attribution_budget asks how
    concentrated the attribution is. Deterministic for a frozen base: callers cache it per question."""
    dense = adapter.answer_logprob(adapter.build_inputs(adapter.connect(V), questions), answers)
    order = targets.argsort(dim=1, descending=True)
    k_star = torch.full((V.shape[0],), float(grid[-1]), device=V.device)
    done = torch.zeros(V.shape[0], dtype=torch.bool, device=V.device)
    for k in grid:
        m = torch.zeros(V.shape[:2], dtype=V.dtype, device=V.device).scatter(1, order[:, :k], 1.0)
        valid = (m[:, groups] > 0).any(dim=-1)
        logp = adapter.answer_logprob(adapter.build_inputs(adapter.connect(V * m[..., None]), questions, valid), answers)
        newly = ~done & (logp >= dense - tolerance)
        k_star[newly] = float(k)
        done |= newly
    return k_star.to(targets.dtype)


def budget_regression(k_cont: torch.Tensor, k_star: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    """L_budget = mean ((k_cont - k*) / (k_max - k_min))^2: f_comp's budget follows k* (attribution_budget or
    sufficient_budget)."""
    return (((k_cont - k_star) / max(k_max - k_min, 1)) ** 2).mean()
