"""The vision stage, and insertion point `vision:L`: selection inside the vision encoder.

pixel values (B, 3, R, R) -> vision layers 1..L -> a selector keeps k units (the s x s patches of one dense
visual token) -> layers L+1.. run on the kept units only -> their final patch features. Without a selector in
the encoder the stage gives V (B, N, d_v) (and, for a post-vision selector that ranks by attention received,
the last layer's input). Per-sample budgets pad the shorter samples' patch sequences and mask them as keys,
so a batch gives each sample its solo result. Raises QGSAError for a budget outside 1..n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from qgsa_bench.selectors.base import SelectState, check_budget
from qgsa_bench.selectors.selection import Selection


@dataclass
class Encoded:
    """What the vision stage hands on. `V` (B, N, d_v) when no unit was dropped in the encoder; else
    `units` (B, k_max, s^2, d_v) the kept units' final patch features with `valid` (B, k_max)."""

    V: torch.Tensor | None = None
    units: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    selection: Selection | None = None
    last_input: torch.Tensor | None = None  # (B, P + N, d_v) input of the last vision layer (visionzip)
    k: torch.Tensor | None = None
    n_units: int = 0
    unit_features: torch.Tensor | None = None  # (B, n, d_v) every unit's features where it was selected
    views: object | None = None  # models.views.Views: V is (M', N_v, d_v), the encoded views (run/tiles.py)
    shown: list[list[int]] | None = None  # per sample, its encoded views (indices among its views)
    content_input: torch.Tensor | None = None  # (M, N_v, d_v) input of a selector's `content_layer` (HiRED)
    view_counts: list[list[int]] | None = None  # vision:L on views: per sample, the units each view kept

    def traced(self) -> tuple[torch.Tensor, ...]:
        """The tensors a FLOP count traces through. On views also a selection's scores (at `tiles` the chosen
        tiles leave the trace as Python indices, so without them a question-guided scorer would count nothing)
        and HiRED's content-layer input."""
        scores = None
        if self.shown is not None and self.selection is not None and torch.is_tensor(self.selection.scores):
            scores = self.selection.scores
        return tuple(t for t in (self.V, self.units, self.last_input, self.content_input, scores) if t is not None)

    def kept(self) -> list[int]:
        """Patches (or kept units' patches) per sample leaving the encoder."""
        if self.units is not None:
            return (self.valid.sum(1) * self.units.shape[2]).tolist()
        if self.shown is not None:  # views: every encoded view's patches
            return [len(s) * self.V.shape[1] for s in self.shown]
        return [self.V.shape[1]] * self.V.shape[0]


class Visual(NamedTuple):
    """The visual tokens reaching the LM: tokens (B, n, d_q), valid (B, n), and the selection behind them
    (None where nothing was selected before the LM)."""

    tokens: torch.Tensor
    valid: torch.Tensor
    selection: Selection | None
    layouts: list | None = None  # split images: per sample its prompt pieces (models/views.image_prompt)

    def traced(self) -> torch.Tensor:
        return self.tokens


def encode(run, pixel_values: torch.Tensor, q: torch.Tensor | None, k=None) -> Encoded:
    """The vision stage of `run` (a stages.Run): V, or the units a vision:L selector kept."""
    point, sel, a = run.spec.point, run.spec.selector, run.adapter
    if point.kind != "vision":
        if point.kind == "post-vision" and sel.attention == "received":
            h_in, h = vision_until(a, pixel_values, a.vision_depth)
            return Encoded(V=a.vision_out(h), last_input=h_in)
        return Encoded(V=a.patch_features(pixel_values))
    h_in, h = vision_until(a, pixel_values, point.layers[0])
    return vision_from(run, h, h_in, q, k)


def vision_until(adapter, pixel_values: torch.Tensor, L: int):
    """The encoder's first L layers: (input of layer L, output of layer L), each (B, P + N, d_v)."""
    h = adapter.vision_embed(pixel_values)  # (B, P + N, d_v)
    for i in range(L - 1):
        h = adapter.vision_layer(i, h)
    return h, adapter.vision_layer(L - 1, h)


def vision_from(run, h: torch.Tensor, h_in: torch.Tensor | None, q, k=None, tau=None,
                budget_grad: bool = True) -> Encoded:
    """Select units of h (the output of vision layer L, (B, P + N, d_v)) and run the rest of the encoder
    on the kept ones only. `tau`: Gumbel temperature of a trainable selector in training mode."""
    point, sel, a = run.spec.point, run.spec.selector, run.adapter
    L = point.layers[0]
    P = a.n_prefix_vision
    B, N = h.shape[0], h.shape[1] - P
    units = a.unit_patches(N, h.device)  # (n, g)
    X = h[:, P:][:, units]  # (B, n, g, d_v)
    n = units.shape[0]
    k = run.budget(k, q, n, B, h.device, f"at {point} ({n} visual tokens there)")
    state = SelectState(point, X.mean(dim=2), torch.ones(B, n, dtype=torch.bool, device=h.device), q=q,
                        patches=X, generator=run.generator, module=run.module)
    state.cache.update(tau=tau, budget_grad=budget_grad)
    if sel.attention == "received":
        state.attention = unit_mean(a.vision_attention_received(L - 1, h_in), units)
    selection = sel.select(state, k)
    check_budget(selection.k, n, f"at {point} ({n} visual tokens there)")
    X_kept, valid = kept_units(X, selection)  # (B, k_max', g, d_v), (B, k_max')
    if selection.merged is not None:  # VisionZip: the merged units are kept visual tokens too (as at post-vision)
        selection.k = valid.sum(1)
    g, d = X_kept.shape[2], X_kept.shape[3]
    h = torch.cat([h[:, :P], X_kept.reshape(B, -1, d)], dim=1)
    key_valid = torch.cat([torch.ones(B, P, dtype=torch.bool, device=h.device),
                           valid.repeat_interleave(g, dim=1)], dim=1)
    mask = None
    if not bool(key_valid.all()):
        mask = torch.zeros(B, 1, 1, h.shape[1], dtype=h.dtype, device=h.device)
        mask = mask.masked_fill(~key_valid[:, None, None], torch.finfo(h.dtype).min)
    for i in range(L, a.vision_depth):
        h = a.vision_layer(i, h, mask)
    out = a.vision_out(h).reshape(B, -1, g, d)
    return Encoded(units=out, valid=valid, selection=selection, k=valid.sum(1), n_units=n,
                   unit_features=state.features)


def unit_mean(per_patch: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    return per_patch[:, units].mean(dim=2)  # (B, N) -> (B, n)


def kept_units(X: torch.Tensor, selection: Selection):
    """The selected units (B, k_max, g, d) and, when the selector merged some (visionzip), those after."""
    idx = selection.indices[:, :, None, None].expand(-1, -1, *X.shape[2:])
    kept, valid = X.gather(1, idx), selection.valid
    if selection.weights is not None:  # straight-through weights (1.0 forward) carry the gradient
        kept = kept * selection.weights[:, :, None, None].to(kept.dtype)
    merged = selection.merged
    if merged is not None and merged.shape[1]:
        k_ctx = torch.tensor([min(merged.shape[1], int(v)) for v in selection.k_ctx], device=X.device) \
            if selection.k_ctx is not None else torch.full((X.shape[0],), merged.shape[1], device=X.device)
        ctx_valid = torch.arange(merged.shape[1], device=X.device)[None] < k_ctx[:, None]
        kept, valid = torch.cat([kept, merged.to(kept.dtype)], dim=1), torch.cat([valid, ctx_valid], dim=1)
    return kept, valid
