"""The layer-by-layer run with a selector at its insertion point (selectors/base.py lists the points).

One run for every selector; only the selector and where it sits differ:
    encode         pixel values -> vision layers (a vision:L selector drops units after layer L; the rest
                   of the encoder runs on the kept units only) -> V or the kept units' patches
    visual_tokens  post-vision selectors pick units of V; the model's own connector makes the tokens
                   (k kept units = k visual tokens); in-LM and input selectors take every token here
    lm_inputs      the prompt around the visual tokens, plus an `LMPlan` for in-LM selectors, which the
                   LM run (models/lm.py) consults between its layers
Selection inside the vision encoder with per-sample budgets pads the shorter samples' patch sequences
and masks them as keys, so a batch gives each sample its solo result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qgsa_bench import QGSAError
from qgsa_bench.qgsa.selector import Selection
from qgsa_bench.selectors import Spec
from qgsa_bench.selectors.base import Point, SelectState, check_budget


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


def _as_budget(k, B: int, device) -> torch.Tensor:
    k = torch.as_tensor(k, dtype=torch.long, device=device)
    return k.expand(B).clone() if k.dim() == 0 else k


def stage_budgets(n: int, k: torch.Tensor, stages: int) -> list[torch.Tensor]:
    """Visual tokens kept after each of `stages` cuts: a geometric sequence from n down to exactly k."""
    ratio = (k.float() / n) ** (1.0 / stages)
    out = [torch.clamp((n * ratio ** j).round().long(), min=1, max=n) for j in range(1, stages)]
    out = [torch.maximum(b, k) for b in out]
    return out + [k]


def tokens_for_layer_average(budget: int, n: int, cuts: tuple[int, ...], depth: int) -> int:
    """The visual tokens to keep after the last in-LM cut so that the tokens averaged over the LM's `depth`
    layers (n before the first cut, then `stage_budgets`) are at most `budget`: the largest such k. The
    papers quote FastV, SparseVLM and PyramidDrop at this layer-averaged count."""
    edges = [0, *cuts, depth]
    segments = [b - a for a, b in zip(edges, edges[1:])]
    for k in range(n, 0, -1):
        kept = [n] + [int(x) for x in stage_budgets(n, torch.tensor([k]), len(cuts))]
        if sum(s * v for s, v in zip(segments, kept)) / depth <= budget:
            return k
    floor = (cuts[0] * n + (depth - cuts[0])) / depth
    raise QGSAError(f"a layer average of {budget} visual tokens is impossible with cuts at {','.join(map(str, cuts))} "
                    f"of {depth} layers: even keeping 1 token after the cuts, the layers average {floor:.1f} "
                    f"(all {n} before the first cut); pick a budget of at least {int(floor) + 1}")


class SelectorRun:
    def __init__(self, adapter, module, generator):
        self.adapter = adapter
        self.module = module
        self.generator = generator

    # ---- where -----------------------------------------------------------------------------
    def point(self, spec: Spec) -> Point:
        a = self.adapter
        point = spec.point or spec.selector.default_point(a.vision_depth, a.lm_depth)
        if point.kind == "vision" and not 1 <= point.layers[0] < a.vision_depth:
            raise QGSAError(f"insertion point {point} is outside the vision encoder: this model runs "
                            f"{a.vision_depth} vision layers, so use vision:1 .. vision:{a.vision_depth - 1} "
                            f"(post-vision is after the last)")
        if point.kind == "lm" and not all(1 <= K < a.lm_depth for K in point.layers):
            raise QGSAError(f"insertion point {point} is outside the language model: it has {a.lm_depth} layers, "
                            f"so use lm:1 .. lm:{a.lm_depth - 1}")
        return point

    def default_budget(self, q: torch.Tensor, n: int) -> torch.Tensor:
        """f_comp(q)'s k (Eq. 2), as QGSA would choose, counted in visual tokens, at most n."""
        return self.module.budget(q)[0].clamp(max=n)

    # ---- vision ----------------------------------------------------------------------------
    def encode(self, spec: Spec, pixel_values: torch.Tensor, q: torch.Tensor | None, k=None) -> Encoded:
        point, sel, a = self.point(spec), spec.selector, self.adapter
        if point.kind != "vision":
            if point.kind == "post-vision" and sel.attention == "received":
                h_in, h = self.vision_until(pixel_values, a.vision_depth)
                return Encoded(V=a.vision_out(h), last_input=h_in)
            return Encoded(V=a.patch_features(pixel_values))
        h_in, h = self.vision_until(pixel_values, point.layers[0])
        return self.vision_from(spec, h, h_in, q, k)

    def vision_until(self, pixel_values: torch.Tensor, L: int):
        """The encoder's first L layers: (input of layer L, output of layer L), each (B, P + N, d_v)."""
        a = self.adapter
        h = a.vision_embed(pixel_values)  # (B, P + N, d_v)
        for i in range(L - 1):
            h = a.vision_layer(i, h)
        return h, a.vision_layer(L - 1, h)

    def vision_from(self, spec: Spec, h: torch.Tensor, h_in: torch.Tensor | None, q, k=None, tau=None,
                    budget_grad: bool = True) -> Encoded:
        """Select units of h (the output of vision layer L, (B, P + N, d_v)) and run the rest of the encoder
        on the kept ones only. `tau`: Gumbel temperature of a trainable selector in training mode."""
        point, sel, a = self.point(spec), spec.selector, self.adapter
        L = point.layers[0]
        P = a.n_prefix_vision
        B, N = h.shape[0], h.shape[1] - P
        units = a.unit_patches(N, h.device)  # (n, g)
        X = h[:, P:][:, units]  # (B, n, g, d_v)
        n = units.shape[0]
        if k is None and not sel.trainable:
            k = self.default_budget(q, n)
        if k is not None:
            k = _as_budget(k, B, h.device)
            check_budget(k, n, f"at {point} ({n} visual tokens there)")
        state = SelectState(point, X.mean(dim=2), torch.ones(B, n, dtype=torch.bool, device=h.device), q=q,
                            patches=X, generator=self.generator, module=self.module)
        state.cache.update(tau=tau, budget_grad=budget_grad)
        if sel.attention == "received":
            state.attention = self._unit_mean(a.vision_attention_received(L - 1, h_in), units)
        selection = sel.select(state, k)
        check_budget(selection.k, n, f"at {point} ({n} visual tokens there)")
        X_kept, valid = self._kept_units(X, selection)  # (B, k_max', g, d_v), (B, k_max')
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

    @staticmethod
    def _unit_mean(per_patch: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        return per_patch[:, units].mean(dim=2)  # (B, N) -> (B, n)

    @staticmethod
    def _kept_units(X: torch.Tensor, selection: Selection):
        """The selected units (B, k_max, g, d) and, when the selector merged some (visionzip), those after."""
        idx = selection.indices[:, :, None, None].expand(-1, -1, *X.shape[2:])
        kept, valid = X.gather(1, idx), selection.valid
        if selection.weights is not None:  # straight-through weights (1.0 forward) carry the gradient
            kept = kept * selection.weights[:, :, None, None].to(kept.dtype)
        merged = getattr(selection, "merged", None)
        if merged is not None and merged.shape[1]:
            k_ctx = torch.tensor([min(merged.shape[1], int(v)) for v in selection.k_ctx], device=X.device) \
                if hasattr(selection, "k_ctx") else torch.full((X.shape[0],), merged.shape[1], device=X.device)
            ctx_valid = torch.arange(merged.shape[1], device=X.device)[None] < k_ctx[:, None]
            kept, valid = torch.cat([kept, merged.to(kept.dtype)], dim=1), torch.cat([valid, ctx_valid], dim=1)
        return kept, valid

    # ---- between encoder and LM --------------------------------------------------------------
    def visual_tokens(self, spec: Spec, enc: Encoded, q: torch.Tensor | None, k=None):
        """-> (tokens (B, n, d_q), valid (B, n), selection or None)."""
        point, sel, a = self.point(spec), spec.selector, self.adapter
        if enc.units is not None:  # selected inside the encoder
            return a.connect_units(enc.units), enc.valid, enc.selection
        V = enc.V
        B, N, _ = V.shape
        if point.kind != "post-vision":  # in the LM or at the input: every token reaches the LM
            tokens = a.connect(V)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=V.device), None
        units = a.unit_patches(N, V.device)
        X = V[:, units]  # (B, n, g, d_v)
        n = units.shape[0]
        k = self.default_budget(q, n) if k is None else _as_budget(k, B, V.device)
        check_budget(k, n, f"at post-vision ({n} visual tokens there)")
        state = SelectState(point, X.mean(dim=2), torch.ones(B, n, dtype=torch.bool, device=V.device), q=q,
                            patches=X, generator=self.generator, module=self.module, project=a.connect_units)
        if sel.attention == "received":
            received = a.vision_attention_received(a.vision_depth - 1, enc.last_input)
            state.attention = self._unit_mean(received, units)
        selection = sel.select(state, k)
        if "tokens" in state.cache and getattr(selection, "merged", None) is None:
            tokens = state.cache["tokens"].gather(1, selection.indices[..., None].expand(-1, -1, a.d_q))
            return tokens, selection.valid, selection
        kept, valid = self._kept_units(X, selection)
        if getattr(selection, "merged", None) is not None:
            selection.k = valid.sum(1)
        return a.connect_units(kept), valid, selection

    # ---- inside the LM ---------------------------------------------------------------------
    def lm_plan(self, spec: Spec, n_visual: torch.Tensor, q: torch.Tensor | None, k=None):
        point = self.point(spec)
        if point.kind != "lm":
            return None
        B = n_visual.shape[0]
        n = int(n_visual.min())
        k = self.default_budget(q, n) if k is None else _as_budget(k, B, n_visual.device)
        check_budget(k, n_visual, f"at {point} ({n} visual tokens enter the LM)")
        return LMPlan(spec.selector, point.layers, stage_budgets(n, k, len(point.layers)), self.generator)


@dataclass
class LMPlan:
    """In-LM selection: prune visual tokens before each layer in `layers`, keeping `budgets[j]` (B,) there.
    `start` makes a fresh pass (prefill or teacher forcing) over some inputs; `fixed` replays selections."""

    selector: object
    layers: tuple[int, ...]
    budgets: list[torch.Tensor]
    generator: torch.Generator | None = None
    fixed: list[Selection] | None = None
    records: list[Selection] = field(default_factory=list)  # what the last pass selected, per stage

    def start(self, inputs, query: int | None = None) -> "PlanPass":
        L = inputs.attention_mask.shape[1]
        query = L - 1 if query is None else query
        self.records = []
        return PlanPass(self, inputs.visual_index, inputs.visual_valid, query, L - 1 - query)

    def for_rows(self, b: int, n: int) -> "LMPlan":
        return LMPlan(self.selector, self.layers, [k[b:b + 1].expand(n) for k in self.budgets], self.generator)

    def replay(self) -> "LMPlan":
        """The same plan, forced to keep what the last pass kept (a recompute with the same pruning)."""
        return LMPlan(self.selector, self.layers, self.budgets, self.generator, fixed=list(self.records))


class PlanPass:
    """One pass of an LMPlan through the LM: tracks where the visual tokens sit as the sequence shrinks."""

    def __init__(self, plan: LMPlan, visual_index, visual_valid, query: int, after: int):
        self.plan = plan
        self.vindex, self.vvalid = visual_index, visual_valid  # (B, n) positions in the current sequence
        self.query_from_end = after + 1  # the query row is L_current - 1 - after
        self.attention = None
        self.stage = 0

    def visual_now(self) -> float:
        return float(self.vvalid.sum(1).float().mean())

    def before_layer(self, runner, i: int, h, key_mask, pos):
        plan, result = self.plan, None
        if i in plan.layers:
            result = self._prune(h, key_mask, pos)
            if result is not None:
                h, key_mask, pos = result
        if (i + 1) in plan.layers and plan.fixed is None and plan.selector.attention:
            self.attention = self._attention(runner, i, h, key_mask, pos)
        return result

    def _attention(self, runner, i, h, key_mask, pos):
        L = h.shape[1]
        query = L - self.query_from_end
        if self.plan.selector.attention == "last":
            probs = runner.attention_probs(i, h, key_mask, pos, torch.tensor([query], device=h.device))
            return probs.mean(dim=1)[:, 0]  # (B, L)
        last_visual = torch.where(self.vvalid, self.vindex, torch.zeros_like(self.vindex)).max(dim=1).values
        start = int(last_visual.min()) + 1
        rows = torch.arange(start, query + 1, device=h.device)
        probs = runner.attention_probs(i, h, key_mask, pos, rows).mean(dim=1)  # (B, T, L)
        text_valid = rows[None, :] > last_visual[:, None]
        return probs, text_valid

    def _prune(self, h, key_mask, pos):
        plan = self.plan
        k = plan.budgets[self.stage]
        B = h.shape[0]
        if plan.fixed is not None:
            selection = plan.fixed[self.stage]
        else:
            feats = h.gather(1, self.vindex[..., None].expand(-1, -1, h.shape[-1]))
            state = SelectState(Point("lm", plan.layers), feats, self.vvalid, generator=plan.generator)
            if plan.selector.attention == "last":
                state.attention = self.attention.gather(1, self.vindex)
            elif plan.selector.attention == "text":
                probs, text_valid = self.attention
                state.text_attention = probs.gather(2, self.vindex[:, None, :].expand(-1, probs.shape[1], -1))
                state.text_valid = text_valid
            selection = plan.selector.select(state, k)
        plan.records.append(selection)
        self.stage += 1
        keep = key_mask.bool().clone()
        is_visual = torch.zeros_like(keep).scatter_(1, self.vindex, self.vvalid)
        keep &= ~is_visual
        kept_pos = self.vindex.gather(1, selection.indices)  # (B, k_max)
        hits = torch.zeros(keep.shape, dtype=torch.long, device=keep.device)
        keep |= hits.scatter_add_(1, kept_pos, selection.valid.long()) > 0
        counts = keep.sum(dim=1)
        L2 = int(counts.max())
        slot = L2 - counts[:, None] + keep.long().cumsum(dim=1) - 1  # right-aligned (left padding)
        slot = torch.where(keep, slot, torch.full_like(slot, L2))
        L = keep.shape[1]
        index = torch.zeros(B, L2 + 1, dtype=torch.long, device=h.device)
        index.scatter_(1, slot, torch.arange(L, device=h.device).expand(B, L).contiguous())
        index = index[:, :L2]
        new_valid = torch.arange(L2, device=h.device)[None] >= (L2 - counts[:, None])
        h2 = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
        self.vindex = torch.where(selection.valid, slot.gather(1, kept_pos), torch.zeros_like(kept_pos))
        self.vvalid = selection.valid
        return h2, new_valid.long(), pos.gather(1, index)


def kept_visual(inputs, selection: Selection | None) -> torch.Tensor | None:
    """(B,) visual tokens kept by the selector: after its last in-LM cut, else what reaches the LM; None
    for a run without selection."""
    plan = inputs.plan
    if plan is not None:
        return plan.budgets[-1]
    return None if selection is None else selection.k


def layer_average(inputs, lm_depth: int) -> float:
    """Visual tokens averaged over the LM's layers (the papers' "retained tokens" for in-LM methods)."""
    n0 = float(inputs.n_visual.float().mean())
    plan = inputs.plan
    if plan is None:
        return n0
    per_layer, now = [], n0
    for i in range(lm_depth):
        if i in plan.layers:
            now = float(plan.budgets[plan.layers.index(i)].float().mean())
        per_layer.append(now)
    return sum(per_layer) / lm_depth
