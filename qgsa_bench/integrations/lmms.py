"""Any qgsa-bench model, selector and budget answering lmms-eval's requests (`Bridge`), and the model arguments
it takes (`ModelArgs`). lmms_model.py wraps a Bridge as lmms-eval's model class; lmms_run.py is `qgsa
lmms-eval`. lmms-eval is imported only by those two, never here.

What is honoured of a request:
  generate_until   context (the question, as the model's own prompt wraps it) and the task's image; greedy
                   decoding always (temperature, top_p, num_beams, do_sample are not read); `max_new_tokens`
                   (default: the model argument max_new_tokens); decoding stops at the model's end token;
                   `until` strings cut the decoded text at the first one found (tokens after it were generated
                   and are counted in the FLOPs, as lmms-eval's own HF models cut them after decoding).
  loglikelihood    log P(continuation | context, image), summed over its tokens (lmms_model.py hands lmms-eval
                   its negative, the loss lmms-eval 0.7.3 takes the argmin of): the continuation is scored as the model's answer after
                   its assistant turn (leading whitespace replaced by the family's answer separator, as `qgsa
                   eval` scores A-OKVQA's choices); `is_greedy` compares every continuation token with the
                   argmax. All options of one question (same task, document and context) are scored on ONE
                   selection: one pass selects, every option replays it (LMPlan.for_rows), as `qgsa eval` does.
One image per request (the first of doc_to_visual's list when it gives one; a request without an image is
refused). The image input follows every command's rule (run/inputs.choose_input): `resolution` gives one square
view of that many px (the paper's form); `image_splitting` / `longest_edge` the model's own processor with that
setting; neither: the model's own setting, so on a model whose processor splits (SmolVLM) every request's image is
split into tiles + a global view, unless the pipelines take one view only (then one square view of the native
size, with one warning). Tile selectors (qgsa-tiles, random-tiles, global-only) need split images; their budget
`k` counts tiles beside the global view, and `share` is refused for them. On split images `share` gives each
image share x its own visual tokens (views x tokens per view). Per sample, beside lmms-eval's own fields: the
input, the visual tokens kept, the visual tokens entering the LM, the kept indices (split images: in the joint
frame of the views), the views and tiles encoded (split images), and fvcore's FLOPs by stage, counted on the
sample alone as it ran (its views encoded) once per distinct shape (resolution, prompt length, visual tokens at
each stage, and on split images the views, the grid, the views encoded and the LM's sequence length; generated
tokens or option lengths) and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from qgsa_bench import QGSAError

MODEL_ID = "qgsa"
INSTALL = "install it with: pip install 'qgsa-bench[lmms]' (lmms-eval 0.7.x)"
FLOP_STAGES = ("vision", "select", "connector", "prefill", "decode", "score")


def lmms_eval_version() -> str:
    """The installed lmms-eval's version. Raises QGSAError (one line saying how to install it) when it is not
    installed or cannot be imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("lmms-eval")
    except PackageNotFoundError:
        raise QGSAError(f"lmms-eval is not installed: {INSTALL}") from None
    try:
        import lmms_eval.api.model  # noqa: F401
    except ImportError as err:
        raise QGSAError(f"lmms-eval {found} is installed but cannot be imported ({err}): {INSTALL}") from None
    return found


@dataclass
class ModelArgs:
    """lmms-eval's model arguments (`--model_args key=value,...`) for the qgsa model. `k`: visual tokens (or
    patches, for the paper's patch-level pipelines; tiles, for tile selectors) kept; `share`: the budget as a
    fraction of them; neither: f_comp(q)'s budget per question. `resolution`: one square view of that many px;
    `image_splitting` (true/false) and `longest_edge` (px): the model's own processor with that setting; none of
    the three: the model's own setting (module docstring). `batch_size`: questions per generation batch
    (loglikelihood: one question, all its options, at a time). Raises QGSAError for k with share, a budget or
    size out of range, or resolution with image_splitting / longest_edge."""

    model: str = "smolvlm-256m"
    pipeline: str = "dense"
    k: int | None = None
    share: float | None = None
    checkpoint: str | None = None
    weights: str = "auto"
    device: str = "auto"
    dtype: str = "fp32"
    resolution: int | None = None
    image_splitting: bool | None = None
    longest_edge: int | None = None
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int = 16
    count_flops: bool = True

    def __post_init__(self):
        from qgsa_bench.config import check_input_options

        check_input_options(self.resolution, self.image_splitting, self.longest_edge)
        if self.k is not None and self.share is not None:
            raise QGSAError(f"give the budget as k or as share, not both (k={self.k}, share={self.share})")
        if self.k is not None and self.k < 1:
            raise QGSAError(f"k must be at least 1, got {self.k}")
        if self.share is not None and not 0 < self.share <= 1:
            raise QGSAError(f"share is a fraction of the visual tokens: pick 0 < share <= 1, got {self.share}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise QGSAError(f"batch_size and max_new_tokens must be at least 1, got {self.batch_size} and "
                            f"{self.max_new_tokens}")


def parse_model_args(values: dict) -> ModelArgs:
    """ModelArgs from lmms-eval's parsed `--model_args` (values as strings, or already typed). Raises QGSAError
    for an unknown key or a value of the wrong kind. `max_batch_size` (lmms-eval passes it) is dropped: batches
    are batch_size questions."""
    kinds = {f.name: f.type for f in fields(ModelArgs)}
    given = {key: value for key, value in values.items() if key != "max_batch_size" and value is not None}
    unknown = sorted(set(given) - set(kinds))
    if unknown:
        raise QGSAError(f"unknown model argument(s) {', '.join(unknown)} for the {MODEL_ID} model: use "
                        f"{', '.join(kinds)}")
    return ModelArgs(**{key: _typed(key, value, kinds[key]) for key, value in given.items()})


def _typed(key: str, value, kind: str):
    """A model argument's value as its field's type ('int | None' -> int, 'bool' -> true/false)."""
    if "bool" in kind:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0"):
            raise QGSAError(f"model argument {key} takes true or false, got '{value}'")
        return text in ("true", "1")
    for name, convert in (("int", int), ("float", float)):
        if name in kind:
            try:
                return convert(value)
            except (TypeError, ValueError):
                raise QGSAError(f"model argument {key} takes {'an integer' if name == 'int' else 'a number'}, "
                                f"got '{value}'") from None
    return str(value)


@dataclass
class Request:
    """One lmms-eval request as the bridge reads it: `key` (task, split, doc_id), the question (lmms-eval's
    context), the image, the seed key of the random selectors, and `extra`: generation kwargs (generate_until)
    or the continuation (loglikelihood)."""

    key: tuple
    question: str
    image: object
    seed_key: str
    extra: object = None


AUTO = "auto"  # Bridge's `splitting` default: chosen from the model arguments and its own pipeline


def bridge_input(adapter, args: ModelArgs, specs, warn=None):
    """The image input of every pipeline in `specs` (run.spec.Spec) under the model arguments `args`
    (run/inputs.choose_input): a models.views.Splitting (the model's processor makes the views) or None (one
    square view of `args.resolution`, or of the native size). `warn` receives the one line said where the model
    splits but a pipeline takes one view only. Raises QGSAError for settings the processor or the tokenizer
    cannot take, or longest_edge where a pipeline takes one view only."""
    from qgsa_bench.run.inputs import choose_input

    return choose_input(adapter, args.resolution, args.image_splitting, args.longest_edge, specs, warn=warn)


class Bridge:
    """One built model (build.Built) and one spec at one budget, answering lmms-eval's requests on one image
    input (`splitting`: a models.views.Splitting, or None for one square view of `requested` px; by default
    chosen by `bridge_input` from `args` and this pipeline alone, with `warn` receiving its one warning line);
    `image_input` says which (run/inputs.describe_input). `logs` holds what each sample's log adds ((task,
    doc_id) -> dict), `flop_counts` the memo of counted shapes. Raises QGSAError before any answer for a
    selector that cannot sit where asked or cannot take the input, a budget it cannot keep, or share for a
    tile selector."""

    def __init__(self, built, args: ModelArgs, spec=None, splitting=AUTO, warn=None):
        from qgsa_bench.experiments.evaluate import check_run
        from qgsa_bench.run.inputs import describe_input

        self.built, self.args = built, args
        self.run = built.run(spec or args.pipeline)
        adapter = built.adapter
        self.splitting = bridge_input(adapter, args, [self.run.spec], warn) if splitting == AUTO else splitting
        self.requested = self.splitting.tile if self.splitting else args.resolution or adapter.image_size
        self.image_input = describe_input(self.splitting, self.requested)
        self.k = self._budget()
        # a selector that cannot sit here or take this input, or a budget it cannot keep
        check_run(self.run, self.requested, self.k, self.splitting)
        self.logs: dict[tuple, dict] = {}
        self.flop_counts: dict[tuple, dict] = {}

    @property
    def label(self) -> str:
        return self.run.label

    def _budget(self) -> int | None:
        """k as given, or share x the units a budget counts here (at least 1); None: f_comp's, a tile selector's
        that takes none (global-only), or share on split images (each image's own: `_view_budget`). Raises
        QGSAError for share with a tile selector."""
        spec = self.run.spec
        if spec.selector.keeps_all or spec.selector.keeps_no_tiles:
            return None
        if self.args.share is None:
            return self.args.k
        if spec.point.kind == "tiles":
            raise QGSAError(f"{self.label} keeps whole tiles: give its budget as k tiles beside the global view "
                            f"(e.g. k=2), not share={self.args.share}")
        if self.splitting is not None:
            return None
        n, _ = self.run.units(self.run.adapter.dense_resolution(self.requested))
        return max(1, round(self.args.share * n))

    def _view_budget(self, views):
        """The budget of a batch of split images: `k`, or with share each image's share x its visual tokens (views
        x the dense tokens of one view), at least 1: one int where they agree, else a (B,) tensor."""
        spec = self.run.spec
        if self.args.share is None or spec.selector.keeps_all or spec.selector.keeps_no_tiles:
            return self.k
        per_view = self.run.adapter.n_dense_tokens(self.splitting.tile)
        budgets = [max(1, round(self.args.share * n * per_view)) for n in views.counts]
        return budgets[0] if len(set(budgets)) == 1 else torch.tensor(budgets)

    def _prepare(self, requests: list[Request], new_tokens: int, k=None):
        """(the run's Result, each sample's budget: int or None) of `requests` as one batch on this bridge's input:
        split images through the model's processor (models.views; the budget `_view_budget`'s), else one square
        view of `requested` px at budget `k` (Run.prepare); `new_tokens` > 0: greedy answers. Raises QGSAError
        for an empty question or a budget the image cannot give."""
        images, questions = [r.image for r in requests], [r.question for r in requests]
        seeds = self.run.sample_seeds(r.seed_key for r in requests)
        if self.splitting is None:
            result = self.run.prepare(images, questions, self.requested, k, new_tokens, seeds)
        else:  # as Run.prepare(..., splitting) does, with the views made once (share reads their number)
            if not all(q and q.strip() for q in questions):
                raise QGSAError("a request's context (the question) is empty: the model answers a question about "
                                "the image")
            views = self.run.adapter.views(images, self.splitting)
            k = self._view_budget(views)
            result = self.run.execute(views, questions, k, new_tokens, seeds=seeds)
        budgets = [None] * len(requests) if k is None else torch.as_tensor(k).reshape(-1).expand(len(requests))
        return result, [None if b is None else int(b) for b in budgets]

    # ---- generate_until -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[Request]) -> list[str]:
        """The greedy answer (text) of each request, in order, batch_size questions at a time, grouped by their
        generation kwargs (max_new_tokens, until)."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self._decoding(request.extra), []).append(i)
        for (new_tokens, until), indices in groups.items():
            for start in range(0, len(indices), self.args.batch_size):
                chunk = indices[start:start + self.args.batch_size]
                for i, text in zip(chunk, self._answer([requests[i] for i in chunk], new_tokens, until)):
                    out[i] = text
        return out

    def _decoding(self, kwargs) -> tuple[int, tuple[str, ...]]:
        """(max_new_tokens, until strings) of a request's generation kwargs. Raises QGSAError for a max_new_tokens
        below 1 or an `until` that is not text."""
        kwargs = dict(kwargs or {})
        new_tokens = int(kwargs.get("max_new_tokens") or self.args.max_new_tokens)
        if new_tokens < 1:
            raise QGSAError(f"max_new_tokens must be at least 1, got {new_tokens}")
        until = kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        if not all(isinstance(u, str) for u in until):
            raise QGSAError(f"generation kwarg 'until' takes text or a list of text, got {until!r}")
        return new_tokens, tuple(u for u in until if u)

    def _answer(self, chunk: list[Request], new_tokens: int, until: tuple[str, ...]) -> list[str]:
        questions = [r.question for r in chunk]
        texts: list[str] = [""] * len(chunk)
        groups = [list(range(len(chunk)))] if self.splitting else \
            self.run.budget_groups(questions, self.requested, self.k)  # downsampling: one size a batch
        for group in groups:
            part = [chunk[i] for i in group]
            result, budgets = self._prepare(part, new_tokens, self.k)
            for b, (i, request) in enumerate(zip(group, part)):
                texts[i] = cut(self.run.adapter.decode_text(result.generated[b]), until)
                flops = self._generation_flops(request, result, b, budgets[b]) if self.args.count_flops else None
                self._log(request, result, b, budgets[b], flops, generated_tokens=len(result.generated[b]))
        return texts

    # ---- loglikelihood --------------------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: list[Request]) -> list[tuple[float, bool]]:
        """(log P(continuation | context, image), is_greedy) per request, in order; the requests of one question
        (same key and context) scored together on one selection."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.key, request.question), []).append(i)
        for indices in groups.values():
            for i, pair in zip(indices, self._options([requests[i] for i in indices])):
                out[i] = pair
        return out

    def _options(self, options: list[Request]) -> list[tuple[float, bool]]:
        from qgsa_bench.run.lm import answer_logprob_greedy

        first, n = options[0], len(options)
        result, budgets = self._prepare([first], 0, self.k)
        rows = result.inputs.rows(0, n)
        plan = None if result.plan is None else result.plan.for_rows(0, n)
        answers = [self._answer_text(r.extra) for r in options]
        logp, greedy = answer_logprob_greedy(self.run.adapter, rows, plan, answers)
        flops = self._option_flops(first, result, rows, plan, answers, budgets[0]) if self.args.count_flops else None
        self._log(first, result, 0, budgets[0], flops, option_selections=self._option_selections(result, plan, n))
        return [(float(lp), bool(g)) for lp, g in zip(logp.tolist(), greedy.tolist())]

    def _answer_text(self, continuation: str) -> str:
        """The continuation as the adapter's teacher forcing takes it (its own separator put back in front)."""
        text = str(continuation)
        return text.lstrip() if text[:1].isspace() else text

    def _option_selections(self, result, plan, n: int) -> list[list[int]] | None:
        """The kept indices each option was scored on (in-LM: what each row's scoring pass kept, read back from
        its replayed plan; before the LM: the one selection every row's copied inputs hold)."""
        if plan is not None and plan.records:
            kept = plan.kept()
            return [kept.indices[i][kept.valid[i]].tolist() for i in range(n)]
        selection = result.kept_selection()
        if selection is None:
            return None
        return [selection.indices[0][selection.valid[0]].tolist()] * n

    # ---- what each sample's log adds ------------------------------------------------------------------
    def _log(self, request: Request, result, b: int, budget, flops: dict | None, **extra) -> None:
        kept = result.kept_selection()
        views = {} if result.views is None else {"views": result.views.counts[b],
                                                 "selected_tiles": result.selected_tiles(b)}
        entry = {"pipeline": self.label, "image_input": self.image_input, "budget": budget,
                 "visual_tokens_kept": result.kept(b), "visual_tokens_to_lm": int(result.inputs.n_visual[b]),
                 "kept_indices": None if kept is None else kept.indices[b][kept.valid[b]].tolist(), **views,
                 "flops": flops, **extra}
        previous = self.logs.get(request.key)
        if previous is not None and flops is not None and previous.get("flops"):  # a repeated request: summed
            entry["flops"] = {k: previous["flops"][k] + flops[k] for k in flops}
        self.logs[request.key] = entry

    def _shape(self, request: Request, result, b: int, *more) -> tuple:
        """The memo key of one sample's FLOPs: resolution, question prompt length, visual tokens at each stage,
        and on split images the views, the grid, the views encoded and the LM's sequence length (the tiles kept
        set the rows the prompt lays out), then `more`."""
        adapter = self.run.adapter
        prompt = len(adapter.tokenize(adapter.prompt_suffix.format(question=request.question)))
        key = (result.resolution, prompt, tuple(n[b] for _, n in result.trace))
        if result.views is not None:
            shown = None if result.shown is None else len(result.shown[b])
            key += ("views", result.views.counts[b], result.views.grids[b], shown,
                    int(result.inputs.attention_mask[b].sum()))
        return (*key, *more)

    def _pixels(self, request: Request, result, b: int):
        """What sample b was encoded from, alone: its views (split images) or its one square view (1, 3, R, R)."""
        if result.views is not None:
            return result.views.sample(b)
        return self.run.adapter.pixel_values([request.image], result.resolution)

    def _counted(self, request: Request, result, b: int, budget, tokens: int) -> dict:
        """measure.count_stage_flops of sample b alone, at its budget, drawing as its answer drew (its seed)."""
        from qgsa_bench.experiments.measure import Case, count_stage_flops

        case = Case(self.label, self.run, budget)
        with self.run.engine.same_draws(), self.run.draws(self.run.sample_seeds([request.seed_key])):
            return count_stage_flops(case, self._pixels(request, result, b), [request.question], tokens)

    def _generation_flops(self, request: Request, result, b: int, budget) -> dict:
        """FLOPs by stage of answering one request alone (measure.count_stage_flops on its own image (its views
        encoded) and question, decoding as many tokens as it generated), memoised by shape."""
        tokens = max(len(result.generated[b]), 1)
        key = self._shape(request, result, b, "generate", tokens)
        if key not in self.flop_counts:
            self.flop_counts[key] = stage_totals(self._counted(request, result, b, budget, tokens), tokens)
        return dict(self.flop_counts[key])

    def _option_flops(self, request: Request, result, rows, plan, answers: list[str], budget) -> dict:
        """FLOPs by stage of one question's options: the selecting pass (vision, select, prefill; no decoding)
        and `score`, the teacher-forced pass of every option, memoised by shape."""
        from qgsa_bench.efficiency.flops import count_flops
        from qgsa_bench.run.lm import answer_logprob_greedy

        adapter = self.run.adapter
        lengths = tuple(len(adapter.tokenize(adapter.answer_prefix + a)) for a in answers)
        key = self._shape(request, result, 0, "options", lengths)
        if key not in self.flop_counts:
            counted = self._counted(request, result, 0, budget, 1)
            score = count_flops(lambda e: answer_logprob_greedy(adapter, replace(rows, inputs_embeds=e), plan,
                                                                answers)[0],
                                rows.inputs_embeds, modules=[adapter.model, self.run.module])
            self.flop_counts[key] = stage_totals(counted, 0, score.total)
        return dict(self.flop_counts[key])


def stage_totals(counted: dict, tokens: int, score: int = 0) -> dict:
    """{stage: FLOPs} of one sample from count_stage_flops' columns: decode = (tokens - 1) cached steps (the first
    token comes from prefill), score = the options' teacher-forced pass, total = their sum."""
    out = {"vision": counted["flops_vision"], "select": counted["flops_select"],
           "connector": counted["flops_connector"], "prefill": counted["flops_prefill"],
           "decode": max(tokens - 1, 0) * counted["flops_decode_per_token"], "score": score}
    out["total"] = sum(out[stage] for stage in FLOP_STAGES)
    return out


def cut(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first occurrence of any of the `until` strings."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text


FILELOCK_NOTE = ("filelock {version} has no filelock._api, which lmms-eval 0.7.3's evaluator imports to make dataset file "
                 "locks re-entrant (_enable_reentrant_filelocks, for nested load_dataset calls); that patch is skipped")


def filelock_workaround() -> str:
    """lmms-eval 0.7.3's simple_evaluate imports `filelock._api`, which filelock 4 no longer has (ModuleNotFoundError
    before any task loads). Where it is missing, mark lmms-eval's patch as done so that simple_evaluate runs; the note
    meta.json keeps ('' where nothing was skipped)."""
    import importlib.util
    from importlib.metadata import version

    if importlib.util.find_spec("filelock._api") is not None:
        return ""
    from lmms_eval import evaluator

    evaluator._enable_reentrant_filelocks._patched = True
    return FILELOCK_NOTE.format(version=version("filelock"))
