"""Patch selection: the `Selection` every selector returns, and the selectors themselves.

All selectors return indices padded to the batch's largest k with a `valid` mask. Selected indices
are sorted in raster order (top-left to bottom-right) so that the LM sees the chosen patches in the
same order as the dense image sequence; padded slots come last and are never valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    indices: torch.Tensor  # (B, k_max) long, patch indices in [0, N); padded slots hold 0
    valid: torch.Tensor  # (B, k_max) bool
    k: torch.Tensor  # (B,) long, number of valid slots per sample
    scores: torch.Tensor | None = None  # (B, N) patch scores s_i, where the selector has them
    weights: torch.Tensor | None = None  # (B, k_max) straight-through mask values (1.0 forward)
    mask_sum: torch.Tensor | None = None  # (B,) sum_i m_i over all N (forward k_b; gradient of the soft mask)
    c: torch.Tensor | None = None  # (B,) sigma(f_comp(q)) when the budget was predicted


def _as_k(k, B: int, N: int, device) -> torch.Tensor:
    k = torch.as_tensor(k, dtype=torch.long, device=device)
    if k.dim() == 0:
        k = k.expand(B)
    if bool((k < 1).any()) or bool((k > N).any()):
        raise ValueError(f"k must be within [1, N={N}], got {k.tolist()}")
    return k


def _pack(order: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From patch indices ranked best-first (B, N) keep the first k_b, sort them, pad to max k."""
    k_max = int(k.max())
    N = order.shape[1]
    top = order[:, :k_max]  # (B, k_max)
    valid = torch.arange(k_max, device=order.device)[None, :] < k[:, None]
    keyed = torch.where(valid, top, torch.full_like(top, N))  # invalid slots sort last
    indices, _ = keyed.sort(dim=1)
    return indices.masked_fill(indices == N, 0), valid


def topk_selection(scores: torch.Tensor, k) -> Selection:
    """Deterministic top-k by score (inference)."""
    B, N = scores.shape
    k = _as_k(k, B, N, scores.device)
    order = scores.argsort(dim=1, descending=True)
    indices, valid = _pack(order, k)
    return Selection(indices, valid, k, scores=scores)


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
    k = _as_k(k, B, N, scores.device)
    u = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=scores.dtype)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    logits = (scores + gumbel) / tau
    s_tilde = torch.softmax(logits, dim=1)
    space = s_tilde if soft_mask_space == "softmax" else logits
    order = space.detach().argsort(dim=1, descending=True)
    t = space.detach().gather(1, order.gather(1, (k - 1)[:, None]))  # k-th order statistic, (B, 1)
    sig = torch.sigmoid((space - t) / max(tau, tau_sig_min))
    soft = sig * k_cont[:, None] / sig.sum(dim=1, keepdim=True)  # (B, N)
    indices, valid = _pack(order, k)
    soft_sel = soft.gather(1, indices)
    weights = (1.0 - soft_sel.detach() + soft_sel) * valid
    soft_sum = soft.sum(dim=1)
    mask_sum = k.to(soft.dtype) + soft_sum - soft_sum.detach()  # straight-through over all N
    return Selection(indices, valid, k, scores=scores, weights=weights, mask_sum=mask_sum)


def random_selection(B: int, N: int, k, device, generator: torch.Generator | None = None) -> Selection:
    """k patches drawn uniformly without replacement (image- and question-blind baseline)."""
    k = _as_k(k, B, N, device)
    order = torch.rand(B, N, generator=generator, device=device).argsort(dim=1)
    indices, valid = _pack(order, k)
    return Selection(indices, valid, k)


def norm_selection(V: torch.Tensor, k) -> Selection:
    """The k patches with the largest feature norm (image-only baseline)."""
    return topk_selection(V.float().norm(dim=-1), k)


def all_selection(B: int, N: int, device) -> Selection:
    """Every patch, in raster order (the dense-bypass accounting baseline)."""
    indices = torch.arange(N, device=device).expand(B, N)
    return Selection(indices, torch.ones(B, N, dtype=torch.bool, device=device),
                     torch.full((B,), N, dtype=torch.long, device=device))


def gather_patches(V: torch.Tensor, selection: Selection, weighted: bool = True) -> torch.Tensor:
    """V (B, N, d_v) -> selected patches (B, k_max, d_v), scaled by the straight-through weights."""
    idx = selection.indices[..., None].expand(-1, -1, V.shape[-1])
    picked = V.gather(1, idx)
    if weighted and selection.weights is not None:
        picked = picked * selection.weights[..., None].to(picked.dtype)
    return picked
