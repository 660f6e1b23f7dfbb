"""The `Selection` every selector returns, and the generic ways to make one (top-k, random, all).

Indices are padded to the batch's largest k with a `valid` mask and sorted in raster order (top-left to
bottom-right), so that the LM sees the chosen items in the dense sequence's order; padded slots come last
and are never valid. Items are whatever the selector ranks: patches, whole visual tokens or tiles, always
numbered in the image's frame. Selectors depend on this module; the QGSA method (qgsa/) depends on it too
(its Gumbel selection returns a Selection), never the reverse.
"""

from __future__ import annotations

import hashlib
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
    merged_from: torch.Tensor | None = None  # (B, k_c, n) bool: the items each merged unit averages (VisionZip)

    def rows(self, b: int, n: int) -> "Selection":
        """Sample b's selection repeated n times (each of a sample's scoring passes on one selection)."""
        def rep(t):
            return None if t is None else t[b:b + 1].expand(n, *t.shape[1:])
        return Selection(rep(self.indices), rep(self.valid), rep(self.k), merged=rep(self.merged),
                         k_ctx=rep(self.k_ctx), merged_from=rep(self.merged_from))

    def within(self, outer: "Selection") -> "Selection":
        """This selection, made among `outer`'s kept items (indices into outer's k_max slots), in outer's
        frame: indices (B, k_max) of the items outer numbered. A later in-LM stage picks among the previous
        stage's survivors; composed stage by stage, every reported index is in the image's frame."""
        indices = outer.indices.gather(1, self.indices)
        return Selection(indices.masked_fill(~self.valid, 0), self.valid, self.k, merged=self.merged,
                         k_ctx=self.k_ctx)


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


def sample_seed(seed: int, key: str) -> int:
    """A sample's own seed: a stable hash (SHA-256, 63 bits) of the run's seed and the sample's key (its id)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:15], 16)


class SampleDraws:
    """Random draws seeded per sample, in place of one generator for a batch: row b of every draw comes
    from a CPU generator seeded with `seeds[b]` (`sample_seed`), so a sample gets the same random items
    whatever batch, batch size, shard or pass (warm-up, retry, each multiple-choice option) it is in, on
    any device. Drawing n values gives the first n of a longer draw (padding changes nothing)."""

    def __init__(self, seeds):
        self.seeds = [int(s) for s in seeds]

    def uniform(self, B: int, n: int, device) -> torch.Tensor:
        """(B, n) uniforms in [0, 1). Raises ValueError when B is not the number of seeds."""
        if B != len(self.seeds):
            raise ValueError(f"{len(self.seeds)} sample seeds for a batch of {B}")
        rows = [torch.rand(n, generator=torch.Generator().manual_seed(s)) for s in self.seeds]
        return torch.stack(rows).to(device)


class ShardDraws:
    """One process's rows of draws made for a whole global batch (data-parallel training): every process
    draws (`rows`, n) from the same seeded generator, as one process training on the global batch does, and
    keeps rows `start::stride` (its questions of the global batch). Its rows are thus the one-process run's,
    and every process's generator stays in step with it."""

    def __init__(self, generator: torch.Generator, rows: int, start: int, stride: int):
        self.generator, self.rows, self.start, self.stride = generator, rows, start, stride

    def uniform(self, B: int, n: int, device, dtype=None) -> torch.Tensor:
        """(B, n) uniforms in [0, 1). Raises ValueError when B is not this process's share of the rows."""
        u = torch.rand(self.rows, n, generator=self.generator, device=device, dtype=dtype)[self.start::self.stride]
        if u.shape[0] != B:
            raise ValueError(f"{u.shape[0]} rows of the global batch for a batch of {B}")
        return u


def uniform(B: int, n: int, device, generator, dtype=None) -> torch.Tensor:
    """(B, n) uniforms in [0, 1) from a torch.Generator (one draw for the batch), SampleDraws, ShardDraws or
    None; `dtype` None: torch's default."""
    if isinstance(generator, SampleDraws):
        return generator.uniform(B, n, device).to(dtype or torch.get_default_dtype())
    if isinstance(generator, ShardDraws):
        return generator.uniform(B, n, device, dtype)
    return torch.rand(B, n, generator=generator, device=device, dtype=dtype)


def random_selection(B: int, N: int, k, device, generator: "torch.Generator | SampleDraws | None" = None,
                     valid: torch.Tensor | None = None) -> Selection:
    """k of N items drawn uniformly without replacement: one uniform draw u (B, N) per item, the k
    smallest kept (items not `valid` (B, N) never). The image- and question-blind baseline."""
    k = as_budget(k, B, N, device)
    u = uniform(B, N, device, generator)
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
