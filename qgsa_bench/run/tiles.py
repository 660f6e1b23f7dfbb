"""The model's own views through the run (models/views.py), and insertion point `tiles`.

Vision stage on Views: every view is encoded on its own, as the vision tower does in the model (a batch of
M views, (M, 3, S, S) -> V (M, N_v, d_v)). At insertion point `tiles` a selector first sees the global view
(encoded first: (B, N_v, d_v)) and picks T of the image's tiles; only those tiles are encoded, the others
never are, and their visual tokens never reach the LM. Select stage: the model's connector on each encoded
view (N_v patches -> n_v visual tokens), the views of a sample concatenated in prompt order (its tiles
row-major, then its global view) with each view's marker in the prompt (`layouts`). A tile's features for
the selector: the global view's patches whose centres fall inside the tile (models/views.tile_of_patches).
Selectors of whole visual tokens at vision:L and post-vision take split images with one budget over every
view's visual tokens (run/view_select.py). Raises QGSAError for a tile budget outside 1..tiles, or a selector
that cannot take split images.
"""

from __future__ import annotations

import torch

from qgsa_bench import QGSAError
from qgsa_bench.models.views import Views, image_prompt
from qgsa_bench.selectors.base import SelectState, check_budget
from qgsa_bench.selectors.selection import Selection


def check_views(spec) -> None:
    """Which selectors take split images: dense, the tile selectors, and every selector of whole visual tokens
    at vision:L, post-vision or lm:K (one budget over every view's visual tokens; run/view_select.py). Raises
    QGSAError for the seed paper's patch-level form and for input-level selectors (downsample)."""
    kind = spec.point.kind if spec.point else None
    if spec.selector.keeps_all and not spec.patches or kind in ("tiles", "lm"):
        return
    if not spec.patches and kind in ("vision", "post-vision"):
        return
    if spec.patches:
        raise QGSAError(f"{spec.text} selects single patches of one view (the seed paper's form); on an image split "
                        f"into tiles give it whole visual tokens, e.g. {spec.selector.name}@post-vision (k visual "
                        f"tokens over all views), or give one square view (--resolution R; sweep-resolution: --sizes)")
    raise QGSAError(f"{spec.text} changes the one image's resolution; on an image split into tiles use dense, a tile "
                    f"selector (qgsa-tiles, random-tiles, global-only) or a selector at vision:L, post-vision or lm:K, "
                    f"or give one square view (--resolution R; sweep-resolution: --sizes)")


TILE_UNITS = ("tiles", "tokens")


def check_tile_unit(unit: str) -> None:
    """Raises QGSAError for a --tile-unit that is not one of TILE_UNITS."""
    if unit not in TILE_UNITS:
        raise QGSAError(f"--tile-unit must be tiles or tokens, got '{unit}'")


def tiles_for_budget(budget: int, unit: str, n_v: int, n_tiles: int, label: str) -> int:
    """T, the tiles a tile selector keeps for `budget` in `unit`: "tiles" (T itself, besides the global view) or
    "tokens" (visual tokens reaching the LM: the global view's n_v, then whole tiles of n_v each, T = floor(budget /
    n_v) - 1). Raises QGSAError (one line, the allowed range) for an unknown unit or a T outside 1..n_tiles."""
    check_tile_unit(unit)
    if unit == "tiles":
        if not 1 <= budget <= n_tiles:
            raise QGSAError(f"{label} at {budget} tiles is impossible: the image has {n_tiles} tiles besides the global "
                            f"view (1 .. {n_tiles} tiles)")
        return budget
    T = budget // n_v - 1
    if not 1 <= T <= n_tiles:
        raise QGSAError(f"{label} at {budget} visual tokens is impossible: the global view takes {n_v} and each tile "
                        f"{n_v} more, and the image has {n_tiles} tiles ({2 * n_v} .. {(n_tiles + 1) * n_v} visual "
                        f"tokens)")
    return T


def tokens_of_tiles(T: int, n_v: int) -> int:
    """Visual tokens a tile selector keeping T tiles hands the LM: the global view's and the T tiles' (n_v each)."""
    return (T + 1) * n_v


def tile_state(run, views: Views, V_global: torch.Tensor, q) -> SelectState:
    """What insertion point `tiles` offers: per tile the mean of the global view's patch features inside it
    (B, n_max, d_v), valid (B, n_max) where the tile exists; `cache`: the global view's patches (B, N_v, d_v)
    and each patch's tile (B, N_v) (-1 where a sample has no tiles)."""
    B, d = V_global.shape[0], V_global.shape[2]
    tiles = [views.counts[b] - 1 for b in range(B)]
    n_max = max(max(tiles), 1)
    where = views.patch_tiles(run.adapter.patch_size, V_global.device)  # (B, N_v)
    features = V_global.new_zeros(B, n_max, d)
    for b in range(B):
        if tiles[b]:
            one_hot = torch.nn.functional.one_hot(where[b], n_max).to(V_global.dtype)  # (N_v, n_max)
            features[b] = (one_hot.T @ V_global[b]) / one_hot.sum(0).clamp(min=1)[:, None]
    valid = torch.arange(n_max, device=V_global.device)[None] < torch.tensor(tiles, device=V_global.device)[:, None]
    state = SelectState(run.spec.point, features, valid, q=q, generator=run.generator, module=run.module)
    state.cache.update(global_patches=V_global, patch_tiles=where)
    return state


def choose_tiles(run, views: Views, V_global: torch.Tensor, q, k, tau: float | None = None
                 ) -> tuple[Selection, SelectState]:
    """The tile selector's choice: (a Selection over each sample's tiles (indices row-major), the state it chose
    from: per tile features (B, n_max, d_v)). `tau`: a trainable selector in training mode (Gumbel temperature,
    `qgsa train --insert tiles`). Raises QGSAError for a budget outside 1..the image's tiles."""
    sel = run.spec.selector
    state = tile_state(run, views, V_global, q)
    if tau is not None:
        state.cache["tau"] = tau
    B = V_global.shape[0]
    if sel.keeps_no_tiles:
        if k is not None:
            raise QGSAError(f"{run.label} keeps no tile (the global view alone) and takes no budget: drop --k")
        return sel.select(state, torch.zeros(B, dtype=torch.long, device=V_global.device)), state
    if k is None:
        raise QGSAError(f"{run.label} needs a budget in tiles (ask, eval, lmms-eval: --k T; sweep-budget, "
                        f"count-flops, grounding: --tiles T): f_comp predicts visual tokens, not tiles")
    n_tiles = state.valid.sum(1)
    if int(n_tiles.min()) == 0:
        raise QGSAError(f"{run.label} chooses among tiles, and an image of this batch was not split (it is one view):"
                        f" use global-only or dense for it, turn image splitting on, or give a larger --longest-edge")
    where = f"at tiles ({int(n_tiles.min())} tiles in the image with the fewest)"
    k = run.budget(k, q, int(n_tiles.min()), B, V_global.device, where, "tiles")
    selection = sel.select(state, k)
    check_budget(selection.k, n_tiles, where, "tiles")
    return selection, state


def encode_views(run, views: Views, q, k, tau: float | None = None):
    """The vision stage on Views: every view encoded, or at `tiles` the global views, the selector's choice,
    then the chosen tiles. -> Encoded with V (M', N_v, d_v) for the encoded views, sample by sample in prompt
    order, `shown` (per sample, the encoded views' indices among its views) and at `tiles` the selection with
    the tiles' features (`unit_features` (B, n_max, d_v), `n_units` = n_max). `tau`: see choose_tiles."""
    from qgsa_bench.run.vision import Encoded

    from qgsa_bench.run import view_select

    a, B = run.adapter, views.batch
    if run.spec.point.kind == "vision":  # one budget over every view's units, inside the encoder
        return view_select.in_encoder(run, views, q, k)
    if run.spec.point.kind != "tiles":
        return view_select.encode_all(run, views)
    V_global = a.patch_features(views.pixel_values[views.global_rows])  # (B, N_v, d_v)
    selection, state = choose_tiles(run, views, V_global, q, k, tau)
    chosen = [sorted(selection.indices[b][selection.valid[b]].tolist()) for b in range(B)]
    rows = [views.first[b] + t for b in range(B) for t in chosen[b]]
    V_tiles = a.patch_features(views.pixel_values[rows]) if rows else None  # only the chosen tiles are encoded
    parts, i = [], 0
    for b in range(B):
        if chosen[b]:
            parts.append(V_tiles[i: i + len(chosen[b])])
            i += len(chosen[b])
        parts.append(V_global[b: b + 1])
    shown = [chosen[b] + [views.counts[b] - 1] for b in range(B)]
    return Encoded(V=torch.cat(parts), views=views, shown=shown, selection=selection,
                   unit_features=state.features, n_units=state.features.shape[1])


def view_tokens(a, enc):
    """The select stage on Views: adapter `a`'s connector on every encoded view, each sample's views
    concatenated. -> (tokens (B, n_max, d_q), valid (B, n_max), layouts: per sample its image's prompt pieces)."""
    views = enc.views
    per_view = a.connect(enc.V)  # (M', n_v, d_q)
    n_v = per_view.shape[1]
    counts = [len(s) for s in enc.shown]
    n_max = max(counts) * n_v
    tokens = per_view.new_zeros(views.batch, n_max, per_view.shape[2])
    valid = torch.zeros(views.batch, n_max, dtype=torch.bool, device=per_view.device)
    if enc.selection is not None and enc.selection.weights is not None:  # training a tile selector
        per_view = per_view * _tile_weights(enc)[:, None, None]
    layouts, start = [], 0
    for b, shown in enumerate(enc.shown):
        n = len(shown) * n_v
        tokens[b, :n] = per_view[start: start + len(shown)].reshape(n, -1)
        valid[b, :n] = True
        start += len(shown)
        markers = views.markers(b)
        layouts.append(image_prompt([markers[i] for i in shown], [n_v] * len(shown), views.grids[b]))
    return tokens, valid, layouts


def _tile_weights(enc) -> torch.Tensor:
    """(M',) each encoded view's weight: a chosen tile's straight-through mask value (training a tile selector:
    1.0 forward, the soft mask's gradient backward; qgsa.gumbel.gumbel_selection), the global view's 1."""
    shown, sel = enc.shown, enc.selection
    ones = torch.ones(sum(map(len, shown)), device=enc.V.device, dtype=enc.V.dtype)
    parts = []
    for b, views in enumerate(shown):
        by_tile = dict(zip(sel.indices[b][sel.valid[b]].tolist(), sel.weights[b][sel.valid[b]]))
        parts += [by_tile[t] if t in by_tile else ones[0] for t in views[:-1]] + [ones[0]]  # the global view: 1
    return torch.stack(parts).to(enc.V.dtype)
