"""QGSA's differentiable selection (Eq. 3-4): Gumbel noise and a straight-through top-k mask."""

from __future__ import annotations

import torch

from qgsa_bench.selectors.selection import Selection, as_budget, pack, uniform


def gumbel_selection(scores: torch.Tensor, k, k_cont: torch.Tensor, tau: float, tau_sig_min: float = 0.05,
                     soft_mask_space: str = "softmax", generator: torch.Generator | None = None) -> Selection:
    """Training-mode selection (Eq. 3-4) with a straight-through hard mask.

    s~ = softmax((s + g)/tau), g ~ Gumbel(0, 1)                           (Eq. 3)
    soft_i = sigma((s~_i - t)/tau_sig) * k_cont / sum_j sigma((s~_j - t)/tau_sig)   (Eq. 4)
    with t the k-th largest s~ (detached) and tau_sig = max(tau, tau_sig_min).

    Choices where the paper is ambiguous (documented in the README):
    * the hard mask is the top-k_b of s~ (exactly k_b ones), not 1[soft > 0.5], which need not hold
      k ones (with s~ near 1/N it usually holds none);
    * the rescaling uses the continuous budget k_cont = k_min + (k_max - k_min) * c, since the
      floor in Eq. 2 has no gradient; this is what carries gradient to f_comp;
    * straight-through: weights = hard + soft - soft.detach(), read at the selected indices.
    """
    B, N = scores.shape
    k = as_budget(k, B, N, scores.device)
    u = uniform(B, N, scores.device, generator, scores.dtype)  # one draw (B, N), as torch.rand(scores.shape)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    logits = (scores + gumbel) / tau
    s_tilde = torch.softmax(logits, dim=1)
    space = s_tilde if soft_mask_space == "softmax" else logits
    order = space.detach().argsort(dim=1, descending=True)
    t = space.detach().gather(1, order.gather(1, (k - 1)[:, None]))  # k-th order statistic, (B, 1)
    sig = torch.sigmoid((space - t) / max(tau, tau_sig_min))
    soft = sig * k_cont[:, None] / sig.sum(dim=1, keepdim=True)  # (B, N)
    indices, valid = pack(order, k)
    soft_sel = soft.gather(1, indices)
    weights = (1.0 - soft_sel.detach() + soft_sel) * valid
    soft_sum = soft.sum(dim=1)
    mask_sum = k.to(soft.dtype) + soft_sum - soft_sum.detach()  # straight-through over all N
    return Selection(indices, valid, k, scores=scores, weights=weights, mask_sum=mask_sum)
