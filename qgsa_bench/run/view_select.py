"""One-view selectors on split images (issue 19): `post-vision` and `vision:L` with ONE budget over all views.

A sample's views (its tiles row-major, then its global view; models/views.py) are encoded apart, as the model
encodes them. A selector at post-vision or vision:L sees the whole units (s x s patches: one dense visual token
each, n_v per view) of ALL of a sample's views as one set, the *joint frame*: item j * n_v + u is unit u of view
j. features (B, n_max, d), patches (B, n_max, s^2, d_v), valid (B, n_max) false past a sample's views (a batch
of images with different numbers of views); its budget k counts visual tokens over all views,
1 <= k <= views x n_v (1,088 for a 2048-px square photo on SmolVLM). What a unit offers is its own view's: at
post-vision the view's final patch features and, for a selector ranking by attention, the attention the unit
receives within its view (views are encoded apart, so each view's attention sums to one over its units); at
vision:L the hidden states of every view after layer L, and each view's kept units then run through layers
L+1.. on their own (a view keeping no unit stops at layer L). The paper-form k of `qgsa`/`random`/`norm` typed
without @ counts single patches of one view through W_vis; on split images use the token form
(`qgsa@post-vision`): k visual tokens = k x s^2 patches (16 on SmolVLM) over all views.

The prompt: the kept tokens stay in view order under their view's marker (<row_r_col_c> or <global-img>); a
view keeping no token loses its marker, as an unchosen tile does at `tiles` (the model never saw an empty view).
VisionZip's contextual tokens merge units of any view and sit in the global view's slot after its kept tokens.
Raises QGSAError for a budget outside 1..the visual tokens of the image with the fewest views.
"""

from __future__ import annotations

import torch

from qgsa_bench.models.views import Views, image_prompt
from qgsa_bench.run.vision import Encoded, kept_units, unit_mean, vision_until
from qgsa_bench.selectors.base import SelectState, check_budget


def joint(per_view: torch.Tensor, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's views as one set: per_view (M, n, ...) (M = all views of the batch) -> (B, V_max * n, ...)
    with item j * n + u = item u of the sample's view j (zeros past its views), and valid (B, V_max * n)."""
    n = per_view.shape[1]
    out = per_view.new_zeros(views.batch, max(views.counts) * n, *per_view.shape[2:])
    valid = torch.zeros(out.shape[:2], dtype=torch.bool, device=per_view.device)
    for b in range(views.batch):
        m = views.counts[b] * n
        out[b, :m] = per_view[views.rows_of(b)].reshape(m, *per_view.shape[2:])
        valid[b, :m] = True
    return out, valid


def encode_all(run, views: Views) -> Encoded:
    """Every view through the whole encoder (post-vision, dense, lm:K): V (M, N_v, d_v); for a selector ranking by
    attention also the last layer's input, and for one reading an earlier layer (`content_layer`, HiRED) that
    layer's input."""
    a, sel = run.adapter, run.spec.selector
    shown = [list(range(n)) for n in views.counts]
    if run.spec.point.kind != "post-vision" or not sel.attention:
        return Encoded(V=a.patch_features(views.pixel_values), views=views, shown=shown)
    h = a.vision_embed(views.pixel_values)
    inputs = []
    for i in range(a.vision_depth):
        inputs.append(h)
        h = a.vision_layer(i, h)
    content = inputs[sel.content_layer - 1] if getattr(sel, "content_layer", None) else None
    return Encoded(V=a.vision_out(h), last_input=inputs[-1], content_input=content, views=views, shown=shown)


def view_state(run, views: Views, X: torch.Tensor, valid: torch.Tensor, q, n_v: int, **extra) -> SelectState:
    """The joint SelectState over X (B, n_max, s^2, d): features the units' means; `cache`: view_of (B, n_max)
    each item's view (-1 past the sample's views), views (per sample its count), units_per_view n_v, the tile
    of each of the global view's patches (B, N_v) (-1 for an unsplit image)."""
    state = SelectState(run.spec.point, X.mean(dim=2), valid, q=q, patches=X, generator=run.generator,
                        module=run.module, project=extra.pop("project", None))
    view_of = torch.arange(X.shape[1], device=X.device)[None].div(n_v, rounding_mode="floor").expand(views.batch, -1)
    state.cache.update(view_of=torch.where(valid, view_of, torch.full_like(view_of, -1)), views=list(views.counts),
                       units_per_view=n_v, patch_tiles=views.patch_tiles(run.adapter.patch_size, X.device), **extra)
    return state


def joint_budget(run, k, q, views: Views, valid: torch.Tensor, where: str):
    """The budget (B,) in visual tokens over all views (f_comp(q)'s without k). Raises QGSAError outside 1..n."""
    n = valid.sum(1)
    k = run.budget(k, q, int(n.min()), views.batch, valid.device, where)
    if k is not None:
        check_budget(k, n, where)
    return k


def view_counts(selection, kept_valid: torch.Tensor, views: Views, n_v: int) -> list[list[int]]:
    """Per sample, the visual tokens each view keeps: the selected items by view, plus a merging selector's
    contextual tokens in the global view (the last)."""
    counts = []
    for b in range(views.batch):
        items = selection.indices[b][selection.valid[b]]
        per_view = torch.bincount(items.div(n_v, rounding_mode="floor"), minlength=views.counts[b]).tolist()
        per_view[-1] += int(kept_valid[b].sum()) - int(selection.valid[b].sum())  # VisionZip's merged tokens
        counts.append(per_view)
    return counts


def layouts(views: Views, counts: list[list[int]]) -> list[list]:
    """Per sample its image's prompt pieces: the views keeping a token, each under its marker."""
    out = []
    for b, per_view in enumerate(counts):
        shown = [j for j, c in enumerate(per_view) if c]
        markers = views.markers(b)
        out.append(image_prompt([markers[j] for j in shown], [per_view[j] for j in shown], views.grids[b]))
    return out


def where_text(point, valid: torch.Tensor, views: Views) -> str:
    n = int(valid.sum(1).min())
    return f"at {point} ({n} visual tokens in the {min(views.counts)} views of the image with the fewest)"


def post_vision(run, enc: Encoded, q, k, tau=None, budget_grad: bool = True):
    """The post-vision stage on split images: k units of all views' -> the connector -> Visual with layouts."""
    from qgsa_bench.run.vision import Visual

    a, sel, views = run.adapter, run.spec.selector, enc.views
    units = a.unit_patches(enc.V.shape[1], enc.V.device)  # (n_v, s^2)
    n_v = units.shape[0]
    X, valid = joint(enc.V[:, units], views)  # (B, n_max, s^2, d_v)
    state = view_state(run, views, X, valid, q, n_v, project=a.connect_units, tau=tau, budget_grad=budget_grad)
    if sel.attention == "received":
        last = unit_mean(a.vision_attention_received(a.vision_depth - 1, enc.last_input), units)  # (M, n_v)
        state.attention = joint(last, views)[0]
    if enc.content_input is not None:  # HiRED: the global view's patches in an early layer (only the global view's)
        state.cache["content_attention"] = a.vision_attention_received(sel.content_layer - 1,
                                                                      enc.content_input[views.global_rows])
    where = where_text(run.spec.point, valid, views)
    selection = sel.select(state, joint_budget(run, k, q, views, valid, where))
    check_budget(selection.k, valid.sum(1), where)
    if "tokens" in state.cache and selection.merged is None:  # the selector projected every unit already
        tokens, kept_valid = state.cache["tokens"].gather(1, selection.indices[..., None].expand(-1, -1, a.d_q)), \
            selection.valid
    else:
        kept, kept_valid = kept_units(X, selection)
        tokens = a.connect_units(kept)
    if selection.merged is not None:
        selection.k = kept_valid.sum(1)
    return Visual(tokens, kept_valid, selection, layouts(views, view_counts(selection, kept_valid, views, n_v)))


def in_encoder(run, views: Views, q, k, tau=None, budget_grad: bool = True) -> Encoded:
    """vision:L on split images: layers 1..L on every view, k units of all views kept, then each view's kept
    units through layers L+1.. on their own. -> Encoded with units (B, k_max, s^2, d_v) in view order (merged
    units last) and `view_counts`."""
    point, sel, a = run.spec.point, run.spec.selector, run.adapter
    L = point.layers[0]
    h_in, h = vision_until(a, views.pixel_values, L)  # (M, N_v, d_v): SigLIP has no prefix token
    units = a.unit_patches(h.shape[1], h.device)
    n_v, g = units.shape
    X, valid = joint(h[:, units], views)
    state = view_state(run, views, X, valid, q, n_v, tau=tau, budget_grad=budget_grad)
    if sel.attention == "received":
        state.attention = joint(unit_mean(a.vision_attention_received(L - 1, h_in), units), views)[0]
    where = where_text(point, valid, views)
    selection = sel.select(state, joint_budget(run, k, q, views, valid, where))
    check_budget(selection.k, valid.sum(1), where)
    kept, kept_valid = kept_units(X, selection)  # (B, k_max', s^2, d_v)
    if selection.merged is not None:
        selection.k = kept_valid.sum(1)
    counts = view_counts(selection, kept_valid, views, n_v)
    out = torch.zeros_like(kept)
    for b in range(views.batch):
        rows, start = kept_valid[b].nonzero().flatten(), 0
        for c in counts[b]:
            if c:  # this view's kept units, through the rest of the encoder on their own
                seq = kept[b, rows[start: start + c]].reshape(1, c * g, -1)
                for i in range(L, a.vision_depth):
                    seq = a.vision_layer(i, seq)
                out[b, rows[start: start + c]] = a.vision_out(seq).reshape(c, g, -1)
            start += c
    return Encoded(units=out, valid=kept_valid, selection=selection, k=kept_valid.sum(1), n_units=X.shape[1],
                   unit_features=state.features, views=views, shown=[list(range(n)) for n in views.counts],
                   view_counts=counts)
