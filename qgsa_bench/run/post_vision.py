"""Between encoder and LM (insertion point `post-vision`): which visual tokens the LM receives.

    dense             the model's connector on every patch: N / s^2 visual tokens
    SELECTOR@post-vision  k whole units (s x s patches each) -> the connector -> k visual tokens
    qgsa | random | norm  (typed without @, the seed paper's pipelines) k single patches, projected by the
                      QGSA module's W_vis (one token each) or, with its projection "connector", by the
                      model's own connector on the masked patch grid
    dense-bypass      every patch through W_vis: N visual tokens (the seed's accounting baseline)
Selectors at other points pass through: their kept units (vision:L) or every token (lm:K, input) go
through the connector here. Shapes: V (B, N, d_v) -> tokens (B, n, d_q), valid (B, n).
"""

from __future__ import annotations

import torch

from qgsa_bench.run.vision import Encoded, Visual, kept_units, unit_mean
from qgsa_bench.selectors.base import SelectState
from qgsa_bench.selectors.selection import Selection, all_selection, gather_patches



def visual_tokens(run, enc: Encoded, q: torch.Tensor | None, k=None, tau: float | None = None,
                  budget_grad: bool = True) -> Visual:
    """The post-vision stage of `run` (a stages.Run). `tau`/`budget_grad`: a trainable selector in training
    mode (Gumbel temperature; whether Eq. 4's rescaling trains f_comp)."""
    spec, a = run.spec, run.adapter
    if enc.views is not None:  # the model's own views (run/tiles.py, run/view_select.py)
        return _view_tokens(run, enc, q, k, tau, budget_grad)
    if enc.units is not None:  # selected inside the encoder
        return Visual(a.connect_units(enc.units), enc.valid, enc.selection)
    V = enc.V
    if spec.patches:
        return _patch_tokens(run, V, q, k, tau, budget_grad)
    if spec.point.kind != "post-vision" or spec.selector.keeps_all:  # dense, or selection elsewhere
        tokens = a.connect(V)
        return Visual(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=V.device), None)
    return _unit_tokens(run, enc, q, k, tau, budget_grad)


def _view_tokens(run, enc: Encoded, q, k, tau, budget_grad) -> Visual:
    """Split images: one budget over every view's units at post-vision, the units kept at vision:L, or every
    encoded view's tokens (dense, tiles, lm:K), each view under its marker in `layouts`."""
    from qgsa_bench.run import view_select
    from qgsa_bench.run.tiles import view_tokens

    if enc.units is not None:  # selected inside the encoder
        return Visual(run.adapter.connect_units(enc.units), enc.valid, enc.selection,
                      view_select.layouts(enc.views, enc.view_counts))
    if run.spec.point.kind == "post-vision" and not run.spec.selector.keeps_all:
        return view_select.post_vision(run, enc, q, k, tau, budget_grad)
    tokens, valid, layouts = view_tokens(run.adapter, enc)
    return Visual(tokens, valid, enc.selection, layouts)


def _state(run, features, q, patches=None, project=None, tau=None, budget_grad=True) -> SelectState:
    B, n = features.shape[:2]
    state = SelectState(run.spec.point, features, torch.ones(B, n, dtype=torch.bool, device=features.device),
                        q=q, patches=patches, generator=run.generator, module=run.module, project=project)
    state.cache.update(tau=tau, budget_grad=budget_grad)
    return state


def _unit_tokens(run, enc: Encoded, q, k, tau, budget_grad) -> Visual:
    """k whole units of V through the model's connector: k visual tokens (VisionZip: plus merged units)."""
    a, sel, V = run.adapter, run.spec.selector, enc.V
    B, N, _ = V.shape
    units = a.unit_patches(N, V.device)
    X = V[:, units]  # (B, n, g, d_v)
    n = units.shape[0]
    k = run.budget(k, q, n, B, V.device, f"at post-vision ({n} visual tokens there)")
    state = _state(run, X.mean(dim=2), q, patches=X, project=a.connect_units, tau=tau, budget_grad=budget_grad)
    if sel.attention == "received":
        state.attention = unit_mean(a.vision_attention_received(a.vision_depth - 1, enc.last_input), units)
    selection = sel.select(state, k)
    if "tokens" in state.cache and selection.merged is None:  # the selector projected every unit already
        tokens = state.cache["tokens"].gather(1, selection.indices[..., None].expand(-1, -1, a.d_q))
        return Visual(tokens, selection.valid, selection)
    kept, valid = kept_units(X, selection)
    if selection.merged is not None:
        selection.k = valid.sum(1)
    return Visual(a.connect_units(kept), valid, selection)


def _patch_tokens(run, V: torch.Tensor, q, k, tau, budget_grad) -> Visual:
    """The seed paper's pipelines: single patches, projected by the QGSA module (or the model's connector)."""
    sel, module = run.spec.selector, run.module
    B, N, _ = V.shape
    if sel.keeps_all:  # dense-bypass
        selection = all_selection(B, N, V.device)
    else:
        if k is None and not sel.trainable:  # f_comp(q)'s budget; the QGSA module predicts its own
            k = run.default_budget(q, N)
        selection = sel.select(_state(run, V, q, tau=tau, budget_grad=budget_grad), k)
    if module.config.projection == "connector":
        tokens, valid = connector_tokens(run.adapter, module, V, selection)
        return Visual(tokens, valid, selection)
    return Visual(module.project(V, selection), selection.valid, selection)


def connector_tokens(adapter, module, V: torch.Tensor, selection: Selection):
    """The model's own connector on the selected patches: (tokens (B, N/s^2, d_q), valid (B, N/s^2)).

    m (B, N) holds the straight-through weight (1.0 forward) of every selected patch and 0 elsewhere;
    the connector (pixel shuffle + a bias-free linear map in Idefics3) runs on V * m, so a token's
    share of each selected patch is exactly the dense one and unselected patches add nothing. A token
    is valid when at least one of its s^2 patches is selected. With a learned fill f (config.fill),
    the connector runs on V * m + (1 - m) * f instead: an unselected patch is f, not zero."""
    B, N, _ = V.shape
    if adapter.group_size == 1 and module.fill is None:  # one patch per token: project k patches
        return adapter.connect(gather_patches(V, selection)), selection.valid
    weights = selection.weights if selection.weights is not None else selection.valid.to(V.dtype)
    weights = torch.where(selection.valid, weights.to(V.dtype), torch.zeros_like(weights, dtype=V.dtype))
    m = torch.zeros(B, N, dtype=V.dtype, device=V.device).scatter_add(1, selection.indices, weights)
    patches = V * m[..., None]
    if module.fill is not None:
        patches = patches + (1 - m[..., None]) * module.fill.to(V.dtype)
    tokens = adapter.connect(patches)
    hard = torch.zeros(B, N, device=V.device).scatter_add(1, selection.indices, selection.valid.float()) > 0
    valid = hard[:, adapter.unit_patches(N, V.device)].any(dim=-1)  # (B, N/s^2)
    return tokens, valid
