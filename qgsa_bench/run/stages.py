"""The one stage sequence. Answering, timing and FLOP counting all call `Run.execute`; only the observer
around the stages differs (observers.py: nothing, a clock, a FLOP counter), so what is timed, what is
counted and what answers are the same run by construction.

    question   q = mean-pooled LM embeddings (B, d_q), where the selector or its budget needs it
    vision     pixel values (B, 3, R, R) -> V (B, N, d_v), or the units a vision:L selector kept
    select     -> visual tokens (B, n, d_q) (post-vision selection; the dense connector)
    prefill    prompt assembly + the LM over the prompt (an lm:K selector prunes between layers) -> logits
    decode     greedy steps with the KV cache (stopping at an end token when answering; forced when timed)
`Engine` holds one model adapter, the QGSA module and the generator random selectors draw from; `Run` is
one bound spec on it. `Result` carries what a run produced and its trace (stage, visual tokens per sample).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from qgsa_bench import QGSAError
from qgsa_bench.models.base import LMInputs
from qgsa_bench.run.lm import LMPlan, answer_logprob, as_budget, kept_visual, lm_plan, prefill
from qgsa_bench.run.observers import Observer
from qgsa_bench.run.post_vision import Visual, visual_tokens
from qgsa_bench.models.views import Splitting, Views
from qgsa_bench.run.spec import Spec, parse_spec
from qgsa_bench.run.tiles import check_views, encode_views
from qgsa_bench.run.vision import Encoded, encode
from qgsa_bench.selectors.base import check_budget
from qgsa_bench.selectors.selection import SampleDraws, Selection, sample_seed

STAGES = ("vision", "select", "prefill", "decode")


class Engine:
    """A model adapter, a QGSA module and the seeded generator of the random selectors."""

    def __init__(self, adapter, module, seed: int = 0):
        self.adapter = adapter
        self.module = module
        self.seed = seed
        gen_device = "cpu" if adapter.device.type == "meta" else adapter.device  # meta: `qgsa info` only
        self.generator = torch.Generator(device=gen_device).manual_seed(seed)

    def run(self, spec: Spec | str) -> "Run":
        """`spec` bound to this model (a string is parsed here, once)."""
        return Run(self, parse_spec(spec))

    def with_module(self, module) -> "Engine":
        """The same model with another QGSA module (a selector's own checkpoint) and its own generator."""
        return Engine(self.adapter, module, self.seed)

    @contextmanager
    def same_draws(self):
        """Run something that draws from the random selectors' generator (a FLOP count, a warm-up) and
        restore it, so the measured run draws the same as one without it."""
        state = self.generator.get_state()
        try:
            yield
        finally:
            self.generator.set_state(state)


@dataclass
class Result:
    """What one run produced. `inputs`: the LM's prompt (with its in-LM plan); `generated`: token ids per
    sample (answering and timed runs); `trace`: (stage, visual tokens per sample) in stage order."""

    spec: Spec
    resolution: int  # the resolution the vision encoder ran at
    n_patches: int  # N
    inputs: LMInputs
    selection: Selection | None
    plan: LMPlan | None = None  # selection inside the LM (lm:K); its `records`: what the last pass kept
    units: torch.Tensor | None = None  # (n, s^2) patches of each visual token (whole-token selectors)
    generated: list[list[int]] | None = None
    state: object | None = None  # the LM state after prefill (and decoding)
    layer_tokens: tuple[int, ...] = ()  # each LM layer's sequence length in prefill (in-LM selection shrinks it)
    trace: list[tuple[str, list[int]]] = field(default_factory=list)
    views: Views | None = None  # the model's own views (then `resolution` is the view size, N per view)
    shown: list[list[int]] | None = None  # per sample, the views encoded (indices among its views)

    @property
    def pipeline(self) -> str:
        return self.spec.text

    def kept(self, b: int) -> int | None:
        """Visual tokens the selector kept for sample b (after its last in-LM cut; downsampling: the tokens of
        its smaller image); None without selection."""
        if self.spec.selector.keeps_all:
            return None
        if self.spec.point.kind in ("input", "tiles"):
            return int(self.inputs.n_visual[b])
        k = kept_visual(self.plan, self.selection)
        return None if k is None else int(k[b])

    def kept_selection(self) -> Selection | None:
        """The selector's final choice in the image's frame: indices (B, k_max) into the N patches (the
        paper's patch-level form) or the n dense visual tokens (every other selector), whatever stage
        made it; None without selection."""
        if self.spec.selector.keeps_all or self.spec.point.kind == "tiles":  # tiles: `selected_tiles`
            return None
        if self.plan is not None and self.plan.records:
            return self.plan.kept()
        return self.selection

    def selected_patches(self, b: int) -> list[int] | None:
        """The patches (indices in [0, N), the image's raster order) behind sample b's kept visual tokens;
        None without selection. VisionZip's merged tokens are in `merged_patches`. Split images: indices in the
        joint frame of all views, patch p of view j (tiles row-major, then the global view) is j * N + p."""
        selection = self.kept_selection()
        if selection is None:
            return None
        return self._patches(selection.indices[b][selection.valid[b]])

    def merged_patches(self, b: int) -> list[list[int]] | None:
        """For a selector that merges the unselected (VisionZip): the patches each merged visual token of
        sample b averages, in the image's frame; None otherwise."""
        selection = self.kept_selection()
        if selection is None or selection.merged_from is None:
            return None
        k_ctx = int(selection.k_ctx[b]) if selection.k_ctx is not None else selection.merged_from.shape[1]
        return [self._patches(row.nonzero().flatten()) for row in selection.merged_from[b][:k_ctx]]

    def patch_fields(self, b: int) -> dict:
        """The record fields of sample b's selection, in the image's frame: `selected_patches`, and
        `merged_patches` for a merging selector; on split images `views`, `selected_tiles` and `scaled_up`
        (models/views.Views.scaled_up)."""
        groups = self.merged_patches(b)
        tiles = {} if self.views is None else {"views": self.views.counts[b], "selected_tiles": self.selected_tiles(b),
                                               "scaled_up": self.views.scaled_up(b)}
        return {"selected_patches": self.selected_patches(b), **({} if groups is None else {"merged_patches": groups}),
                **tiles}

    def selected_tiles(self, b: int) -> list[int] | None:
        """Split images: sample b's encoded tiles (row-major indices among its tiles); None when every view was
        encoded without a tile selector."""
        if self.views is None or self.shown is None or self.spec.point.kind != "tiles":
            return None
        return self.shown[b][:-1]

    def _patches(self, items: torch.Tensor) -> list[int]:
        if self.units is None:
            return sorted(items.tolist())
        return sorted(self.units.to(items.device)[items].flatten().tolist())


class Run:
    """One spec bound to one engine: the stage sequence (module docstring)."""

    def __init__(self, engine: Engine, spec: Spec):
        self.engine = engine
        self.adapter = engine.adapter
        self.module = engine.module
        self.generator = engine.generator
        self.spec = spec.bind(self.adapter.vision_depth, self.adapter.lm_depth)
        self._check_checkpoint_point()

    def _check_checkpoint_point(self) -> None:
        """A QGSA checkpoint scores the features of the insertion point it was trained at (`qgsa train
        --insert`): a selector of the module at another point would read other features. `tiles` and
        `post-vision` read the same features (the encoder's final patch features; at `tiles` the global view's),
        so a checkpoint of either serves both. Raises QGSAError."""
        trained = getattr(self.module, "trained_at", None)
        sel = self.spec.selector
        if not trained or not sel.uses_module or sel.keeps_all:
            return
        here = "post-vision" if self.spec.patches else str(self.spec.point)
        final = ("post-vision", "tiles")
        if here != trained and not (here in final and trained in final):
            use = {"post-vision": "qgsa", "tiles": "qgsa-tiles"}.get(trained, f"qgsa-vision@{trained}")
            raise QGSAError(f"the QGSA checkpoint was trained at {trained} (qgsa train --insert {trained}) and "
                            f"{self.label} selects at {here}: its scores would read other features; use "
                            f"--pipelines {use} with it, or another --checkpoint")

    @property
    def label(self) -> str:
        return self.spec.text

    def sample_seeds(self, keys) -> list[int]:
        """Each sample's own seed from its key (e.g. its id) and the engine's seed (`sample_seed`)."""
        return [sample_seed(self.engine.seed, str(key)) for key in keys]

    @contextmanager
    def draws(self, seeds=None):
        """Within it, random selectors draw per sample from `seeds` (B,) (SampleDraws): one sample, one
        selection, in any batch, shard or pass. None: from the engine's generator (one draw per batch)."""
        if seeds is None:
            yield
            return
        self.generator = SampleDraws(seeds)
        try:
            yield
        finally:
            self.generator = self.engine.generator

    # ---- before any work ---------------------------------------------------------------------
    def resolution(self, requested: int, k=None) -> int:
        """The resolution the encoder runs at for `requested` px: the dense path's (R rounded up to whole
        connector units) for every pipeline, so that a selector and the dense reference always see the same
        pixels; downsampling alone runs at the size giving k tokens (its method). Raises QGSAError for an
        impossible size or budget."""
        a, spec = self.adapter, self.spec
        a.n_patches(requested)  # validates R for every pipeline
        if spec.point.kind == "input":
            if k is None or torch.as_tensor(k).numel() != 1:
                raise QGSAError("downsample needs one budget for the batch: give --k (visual tokens)")
            k = int(torch.as_tensor(k))
            n = a.n_dense_tokens(a.dense_resolution(requested))
            if not 1 <= k <= n:
                raise QGSAError(f"budget {k} visual tokens is impossible for downsample: pick 1 <= budget <= {n} "
                                f"(the dense tokens at {a.dense_resolution(requested)} px)")
            return a.resolution_for_tokens(k)
        return a.dense_resolution(requested)

    def check(self, requested: int, k=None) -> int:
        """`resolution`, plus a budget within 1..n (`units`). Raises QGSAError before any work. Downsampling
        without a budget (f_comp gives one per question, `prepare`): the size is checked, the dense path's
        resolution returned."""
        if k is None and self.spec.point.kind == "input":
            return self.adapter.dense_resolution(requested)
        res = self.resolution(requested, k)
        if k is None or self.spec.selector.keeps_all or self.spec.point.kind == "input":
            return res
        n, unit = self.units(res)
        if self.spec.patches:
            k_list = torch.as_tensor(k).reshape(-1).tolist()
            if min(k_list) < 1 or max(k_list) > n:
                raise QGSAError(f"k={max(k_list) if max(k_list) > n else min(k_list)} is impossible: "
                                f"pick 1 <= k <= N = {n} {unit} at resolution {res}")
        else:
            there = "enter the LM" if self.spec.point.kind == "lm" else "there"
            check_budget(torch.as_tensor(k).reshape(-1), n, f"at {self.spec.point} ({n} {unit} {there})")
        return res

    def units(self, res: int) -> tuple[int, str]:
        """(n, what they are): the units a budget counts at encoder resolution `res`: N patches for the
        paper's patch-level pipelines, the dense visual tokens for whole-token selectors (vision:L,
        post-vision, lm:K) and downsampling."""
        if self.spec.patches:
            return self.adapter.n_patches(res), "patches"
        return self.adapter.n_dense_tokens(res), "visual tokens"

    def needs_question(self, k=None) -> bool:
        """q is computed when the selector reads the question or f_comp(q) must give the budget."""
        sel = self.spec.selector
        return not self.spec.is_dense and (sel.question_guided or sel.uses_module or k is None)

    def budget(self, k, q: torch.Tensor | None, n: int, B: int, device, where: str,
               unit: str = "visual tokens") -> torch.Tensor | None:
        """The budget (B,) of a selection over n units: k as given, or f_comp(q)'s (`default_budget`); None
        for a trainable selector that predicts its own. Raises QGSAError for k outside 1..n (in `unit`)."""
        if k is None and not self.spec.selector.trainable:
            k = self.default_budget(q, n)
        if k is not None:
            k = as_budget(k, B, device)
            check_budget(k, n, where, unit)
        return k

    def adaptive_budgets(self, questions: list[str], requested: int) -> torch.Tensor:
        """f_comp(q)'s budget (B,) for each question, counted in the dense visual tokens at `requested` px: what
        an input-level selector (downsampling) runs at without a fixed k, as every other selector does."""
        a = self.adapter
        return self.default_budget(self.question(questions), a.n_dense_tokens(a.dense_resolution(requested)))

    def input_budget(self, questions: list[str], requested: int) -> int:
        """The one f_comp budget of a batch for an input-level selector (`adaptive_budgets`). Raises QGSAError
        when the questions get different budgets: an image batch is encoded at one resolution."""
        budgets = sorted(set(self.adaptive_budgets(questions, requested).tolist()))
        if len(budgets) > 1:
            raise QGSAError(f"{self.label} encodes a batch at one resolution, and f_comp gives these questions "
                            f"budgets {budgets}: answer them in groups of one budget (`budget_groups`), or give --k")
        return budgets[0]

    def budget_groups(self, questions: list[str], requested: int, k=None) -> list[list[int]]:
        """Sample indices grouped so that each group can run as one batch: one group, except for an
        input-level selector whose samples have different budgets (f_comp's without a fixed k, or a (B,)
        budget per sample, an allocation's): grouped by budget, since an image is encoded at the one
        resolution that gives its budget."""
        if self.spec.point.kind != "input":
            return [list(range(len(questions)))]
        if k is None:
            budgets = self.adaptive_budgets(questions, requested).tolist()
        else:
            budgets = torch.as_tensor(k).reshape(-1).expand(len(questions)).tolist()
        groups: dict[int, list[int]] = {}
        for b, budget in enumerate(budgets):
            groups.setdefault(budget, []).append(b)
        return list(groups.values())

    def default_budget(self, q: torch.Tensor, n: int) -> torch.Tensor:
        """f_comp(q)'s k (Eq. 2), as QGSA would choose, counted in the items selected here, at most n."""
        return self.module.budget(q)[0].clamp(max=n)

    # ---- the stages ------------------------------------------------------------------------------
    def question(self, questions: list[str]) -> torch.Tensor:
        return self.adapter.question_embedding(questions)  # (B, d_q)

    def encode(self, pixel_values: torch.Tensor, q: torch.Tensor | None, k=None) -> Encoded:
        return encode(self, pixel_values, q, k)

    def select(self, enc: Encoded, q: torch.Tensor | None, k=None, tau: float | None = None,
               budget_grad: bool = True) -> Visual:
        return visual_tokens(self, enc, q, k, tau, budget_grad)

    def lm_inputs(self, visual: Visual, questions: list[str], q: torch.Tensor | None, k=None):
        """(the prompt around the visual tokens, the in-LM selection plan where the point is lm:K, else None)."""
        inputs = self.adapter.build_inputs(visual.tokens, questions, visual.valid, visual.layouts)
        if self.spec.point.kind != "lm":
            return inputs, None
        n = int(inputs.n_visual.min())
        return inputs, lm_plan(self.spec, inputs.n_visual, self.default_budget(q, n) if k is None else k,
                               self.generator)

    def prefill(self, inputs: LMInputs, plan: LMPlan | None):
        """(next-token logits (B, vocab), LM state): the prompt through the LM, pruned where `plan` says."""
        return prefill(self.adapter, inputs, plan)

    def answer_logprob(self, inputs: LMInputs, plan: LMPlan | None, answers: list[str]) -> torch.Tensor:
        """log P(answer | prompt) (B,), teacher-forced through the same pruned LM (multiple choice, training)."""
        return answer_logprob(self.adapter, inputs, plan, answers)

    def execute(self, pixel_values: torch.Tensor | Views, questions: list[str], k=None, new_tokens: int = 0,
                stop: bool = True, observer: Observer | None = None, seeds=None) -> Result:
        """Every stage once, in order, under `observer`. `pixel_values`: (B, 3, R, R), one square view per
        image, or the model's own Views (models/views.py: tiles and a global view; run/tiles.py).
        `new_tokens`: tokens to generate after prefill (0: stop after prefill); `stop`: at each sample's end
        token (answering) or never (timing); `seeds`: each sample's seed for the random selectors (`draws`).
        Raises QGSAError for a selector that cannot take split images (tiles.check_views), or a tile selector
        given one square view."""
        if isinstance(pixel_values, Views):
            check_views(self.spec)
        elif self.spec.point.kind == "tiles":
            from qgsa_bench.run.inputs import ONE_VIEW_TILES

            raise QGSAError(f"{self.label} {ONE_VIEW_TILES}")
        with self.draws(seeds):
            return self._execute(pixel_values, questions, k, new_tokens, stop, observer)

    def _execute(self, pixel_values, questions, k, new_tokens, stop, observer) -> Result:
        obs = observer or Observer()
        early = self.spec.point.kind in ("vision", "tiles")
        wants_q = self.needs_question(k)
        obs.start()
        q = self.question(questions) if early and wants_q else None
        views = pixel_values if isinstance(pixel_values, Views) else None
        if views is not None:  # traced through its pixel values (a FLOP count traces tensors)
            enc = obs.stage("vision", lambda px: encode_views(self, views.with_pixels(px), q, k), views.pixel_values)
            pixel_values = views.pixel_values
        else:
            enc = obs.stage("vision", lambda px: self.encode(px, q, k), pixel_values)
        if wants_q and q is None:
            q = self.question(questions)
        if q is not None:
            visual = obs.stage("select", lambda q_: self.select(enc, q_, k), q)
        else:
            visual = obs.stage("select", lambda _: self.select(enc, None, k), pixel_values)
        inputs, plan = self.lm_inputs(visual, questions, q, k)
        logits, state = obs.stage("prefill", lambda e, m, p: self.prefill(
            replace(inputs, inputs_embeds=e, attention_mask=m, position_ids=p), plan),
            inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids)
        layer_tokens = tuple(mask.shape[1] for mask in state.key_masks)  # before decoding grows them
        generated = obs.decode(self.adapter, logits, state, new_tokens, stop) if new_tokens else None
        obs.finish()
        if torch.is_tensor(generated):  # forced decoding (timing): read after the clock stopped
            generated = generated.tolist()
        N = self.adapter.n_patches(pixel_values.shape[-1])
        units = None if self.spec.patches else self.adapter.unit_patches(N)
        if views is not None:  # the joint frame of every view: patch p of view j is j * N + p (run/view_select.py)
            units = (torch.arange(max(views.counts))[:, None, None] * N + units[None]).reshape(-1, units.shape[1])
        result = Result(self.spec, pixel_values.shape[-1], N, inputs, visual.selection, plan, units, generated,
                        state, layer_tokens, views=views, shown=enc.shown)
        result.trace = [("vision", enc.kept()), ("select", visual.valid.sum(1).tolist()),
                        ("prefill", [int(x) for x in kept_visual(plan, visual.selection)]
                         if plan is not None else inputs.n_visual.tolist())]
        if new_tokens:  # the KV cache holds the visual tokens prefill kept
            result.trace.append(("decode", result.trace[-1][1]))
        return result

    # ---- whole runs ------------------------------------------------------------------------------
    def prepare(self, images, questions: list[str], resolution: int, k=None, new_tokens: int = 0,
                seeds=None, splitting: Splitting | None = None) -> Result:
        """Check the inputs, make the pixel values and execute (answering: `new_tokens` > 0). `splitting`: the
        model's own views (models/views.py; `resolution` unused), else one square view of `resolution` px."""
        if len(images) != len(questions):
            raise QGSAError(f"{len(images)} images but {len(questions)} questions")
        for question in questions:
            if not question or not question.strip():
                raise QGSAError("empty question: pass a non-empty --question")
        if splitting is not None:
            return self.execute(self.adapter.views(images, splitting), questions, k, new_tokens, seeds=seeds)
        if k is None and self.spec.point.kind == "input":
            k = self.input_budget(questions, resolution)
        res = self.check(resolution, k)
        pixel_values = self.adapter.pixel_values(images, res)
        return self.execute(pixel_values, questions, k, new_tokens, seeds=seeds)

    def answer(self, images, questions: list[str], resolution: int, k=None, max_new_tokens: int = 16,
               seeds=None, splitting: Splitting | None = None) -> Result:
        """Greedy answers (stopping at each sample's end token) with everything `prepare` gives."""
        return self.prepare(images, questions, resolution, k, new_tokens=max_new_tokens, seeds=seeds,
                            splitting=splitting)
