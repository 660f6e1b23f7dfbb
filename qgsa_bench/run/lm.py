"""Insertion point `lm:K`: selection inside the language model.

An `LMPlan` prunes visual tokens before each LM layer in its cut list; the LM runner (models/lm.py) consults
it between layers (`before_layer`), so later layers and their KV cache hold only the kept visual tokens, at
their original positions. Multi-stage selectors (PyramidDrop, SparseVLM) keep a geometric sequence of
budgets ending exactly at k. Budgets are visual tokens per sample (B,) long; attention for the selectors
that need it is computed for the one layer and query rows they read (float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qgsa_bench import QGSAError
from qgsa_bench.selectors.base import Point, SelectState, check_budget
from qgsa_bench.selectors.selection import Selection


def as_budget(k, B: int, device) -> torch.Tensor:
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


def lm_plan(spec, n_visual: torch.Tensor, k: torch.Tensor | None, generator) -> "LMPlan | None":
    """The plan of a bound spec whose point is lm:K (None elsewhere). n_visual (B,) visual tokens entering the
    LM; k (B,) the budget after the last cut (f_comp's when the caller had none). Raises QGSAError for a
    budget outside 1..n."""
    point = spec.point
    if point.kind != "lm":
        return None
    n = int(n_visual.min())
    k = as_budget(k, n_visual.shape[0], n_visual.device)
    check_budget(k, n_visual, f"at {point} ({n} visual tokens enter the LM)")
    return LMPlan(spec.selector, point.layers, stage_budgets(n, k, len(point.layers)), generator)


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
        """Sample b's plan for n rows of its inputs (`LMInputs.rows`: one per multiple-choice option): after a
        pass, each row replays what that pass kept for b, so every option is scored on one selection."""
        fixed = [record.rows(b, n) for record in self.records] if self.records else None
        return LMPlan(self.selector, self.layers, [k[b:b + 1].expand(n) for k in self.budgets], self.generator,
                      fixed=fixed)

    def kept(self) -> Selection | None:
        """What the last pass kept after its last cut, as indices (B, k_max) into the visual tokens that
        entered the LM (the image's frame): each stage's record picks among the previous stage's survivors,
        so the records are composed (Selection.within). None before a pass."""
        if not self.records:
            return None
        kept = self.records[0]
        for record in self.records[1:]:
            kept = record.within(kept)
        return kept

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


def prefill(adapter, inputs, plan: "LMPlan | None"):
    """The prompt through the LM, pruned as `plan` says between its layers: (next-token logits (B, vocab),
    the state for cached decoding). Without a plan, the model's own prefill."""
    if plan is None:
        return adapter.prefill(inputs)
    hidden, state = run_planned(adapter.lm, inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids,
                                adapter.new_cache(), plan.start(inputs))
    return adapter.lm_head(hidden[:, -1]), state


def answer_logprob(adapter, inputs, plan: "LMPlan | None", answers: list[str]) -> torch.Tensor:
    """log P(answer | prompt) (B,) by teacher forcing, the LM pruned as in prefill (the kept tokens are ranked
    by the last prompt token, which the appended answer cannot change)."""
    if plan is None:
        return adapter.answer_logprob(inputs, answers)
    embeds, mask, ids, amask = adapter.teacher_forcing(inputs, answers)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    query = inputs.attention_mask.shape[1] - 1
    hidden, _ = run_planned(adapter.lm, embeds, mask, positions, None, plan.start(inputs, query=query))
    return adapter.answer_scores(hidden, ids, amask)


def answer_logprob_greedy(adapter, inputs, plan: "LMPlan | None", answers: list[str]):
    """(log P(answer | prompt) (B,) float, greedy (B,) bool): `answer_logprob`'s teacher-forced pass, and whether
    greedy decoding would produce each answer's tokens (every answer token is the argmax at its position). The
    same arithmetic as `answer_logprob` (the LM pruned as `plan` says; without one, the model's own forward)."""
    embeds, mask, ids, amask = adapter.teacher_forcing(inputs, answers)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    if plan is None:
        hidden = adapter.lm_forward(embeds, mask, positions)
    else:
        query = inputs.attention_mask.shape[1] - 1
        hidden, _ = run_planned(adapter.lm, embeds, mask, positions, None, plan.start(inputs, query=query))
    A = ids.shape[1]
    picks = adapter.lm_head(hidden[:, -A - 1: -1]).argmax(dim=-1)  # (B, A): the greedy token at each answer step
    greedy = ((picks == ids) | (amask == 0)).all(dim=1)
    return adapter.answer_scores(hidden, ids, amask), greedy


def run_planned(runner, embeds, mask, positions, cache, plan_pass: "PlanPass"):
    """The LM (models/lm.LlamaRunner) a layer at a time, `plan_pass` pruning the visual tokens before the
    layers of its plan: (normed hidden states of the last segment (B, L', d), LMState)."""
    from qgsa_bench.models.lm import LMState

    h, key_mask, pos, pos_emb = embeds, mask, positions, None
    state = LMState(cache, mask)
    for i in range(runner.depth):
        pruned = plan_pass.before_layer(runner, i, h, key_mask, pos)
        if pruned is not None:
            (h, key_mask, pos), pos_emb = pruned, None
        h, pos_emb = runner.run_layers(h, key_mask, pos, range(i, i + 1), state, pos_emb, plan_pass.visual_now())
    return runner.norm(h), state


def kept_visual(plan: "LMPlan | None", selection: Selection | None) -> torch.Tensor | None:
    """(B,) visual tokens kept by the selector: after its last in-LM cut, else what reaches the LM; None
    for a run without selection."""
    if plan is not None:
        return plan.budgets[-1]
    return None if selection is None else selection.k


def layer_average(inputs, plan: "LMPlan | None", lm_depth: int) -> float:
    """Visual tokens averaged over the LM's layers (the papers' "retained tokens" for in-LM methods)."""
    n0 = float(inputs.n_visual.float().mean())
    if plan is None:
        return n0
    per_layer, now = [], n0
    for i in range(lm_depth):
        if i in plan.layers:
            now = float(plan.budgets[plan.layers.index(i)].float().mean())
        per_layer.append(now)
    return sum(per_layer) / lm_depth
