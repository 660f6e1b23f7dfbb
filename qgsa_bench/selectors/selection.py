"""The `Selection` every selector returns, and the generic ways to make one (top-k, random, all).

Indices are padded to the batch's largest k with a `valid` mask and sorted in raster order (top-left to
bottom-right), so that the LM sees the chosen items in the dense sequence's order; padded slots come last
and are never valid. Items are whatever the selector ranks: patches, whole visual tokens or tiles, always
numbered in the image's frame. Selectors depend on this module; the QGSA method (qgsa/) depends on it too
(its Gumbel selection returns a Selection), never the reverse.
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
    merged: torch.Tensor | None = None  # (B, k_c, s^2, d_v) units merged from the unselected (VisionZip)
    k_ctx: torch.Tensor | None = None  # (B,) how many of `merged` are real per sample


def as_budget(k, B: int, N: int, device) -> torch.Tensor:
    k = torch.as_tensor(k, dtype=torch.long, device=device)
    if k.dim() == 0:
        k = k.expand(B)
    if bool((k < 1).any()) or bool((k > N).any()):
        raise ValueError(f"k must be within [1, N={N}], got {k.tolist()}")
    return k


def pack(order: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    k = as_budget(k, B, N, scores.device)
    order = scores.argsort(dim=1, descending=True)
    indices, valid = pack(order, k)
    return Selection(indices, valid, k, scores=scores)


def random_selection(B: int, N: int, k, device, generator: torch.Generator | None = None,
                     valid: torch.Tensor | None = None) -> Selection:
    """k of N items drawn uniformly without replacement: one uniform draw u (B, N) per item, the k
    smallest kept (items not `valid` (B, N) never). The image- and question-blind baseline."""
    k = as_budget(k, B, N, device)
    u = torch.rand(B, N, generator=generator, device=device)
    if valid is not None:
        u = u.masked_fill(~valid, float("inf"))
    indices, valid = pack(u.argsort(dim=1), k)
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
