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
refused). Per sample, beside lmms-eval's own fields: the visual tokens kept, the visual tokens entering the LM,
the kept indices, and fvcore's FLOPs by stage, counted once per distinct shape (resolution, prompt length,
visual tokens at each stage, generated tokens or option lengths) and reused.
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
    patches, for the paper's patch-level pipelines) kept; `share`: the budget as a fraction of them; neither:
    f_comp(q)'s budget per question. `batch_size`: questions per generation batch (loglikelihood: one question,
    all its options, at a time)."""

    model: str = "smolvlm-256m"
    pipeline: str = "dense"
    k: int | None = None
    share: float | None = None
    checkpoint: str | None = None
    weights: str = "auto"
    device: str = "auto"
    dtype: str = "fp32"
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int = 16
    count_flops: bool = True

    def __post_init__(self):
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


class Bridge:
    """One built model (build.Built) and one spec at one budget, answering lmms-eval's requests; `logs` holds
    what each sample's log adds ((task, doc_id) -> dict), `flop_counts` the memo of counted shapes."""

    def __init__(self, built, args: ModelArgs, spec=None):
        self.built, self.args = built, args
        self.run = built.run(spec or args.pipeline)
        adapter = built.adapter
        self.requested = args.resolution or adapter.image_size
        self.k = self._budget()
        self.run.check(self.requested, self.k)  # a selector that cannot sit here, or a budget it cannot keep
        self.logs: dict[tuple, dict] = {}
        self.flop_counts: dict[tuple, dict] = {}

    @property
    def label(self) -> str:
        return self.run.label

    def _budget(self) -> int | None:
        """k as given, or share x the units a budget counts here (at least 1); None: f_comp's."""
        if self.args.share is None or self.run.spec.selector.keeps_all:
            return None if self.run.spec.selector.keeps_all else self.args.k
        n, _ = self.run.units(self.run.adapter.dense_resolution(self.requested))
        return max(1, round(self.args.share * n))

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
        for group in self.run.budget_groups(questions, self.requested, self.k):  # downsampling: one size a batch
            part = [chunk[i] for i in group]
            result = self.run.answer([r.image for r in part], [r.question for r in part], self.requested, self.k,
                                     new_tokens, self.run.sample_seeds(r.seed_key for r in part))
            for b, (i, request) in enumerate(zip(group, part)):
                texts[i] = cut(self.run.adapter.decode_text(result.generated[b]), until)
                flops = self._generation_flops(request, result, b) if self.args.count_flops else None
                self._log(request, result, b, flops, generated_tokens=len(result.generated[b]))
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
        result = self.run.prepare([first.image], [first.question], self.requested, self.k, 0,
                                  self.run.sample_seeds([first.seed_key]))
        rows = result.inputs.rows(0, n)
        plan = None if result.plan is None else result.plan.for_rows(0, n)
        answers = [self._answer_text(r.extra) for r in options]
        logp, greedy = answer_logprob_greedy(self.run.adapter, rows, plan, answers)
        flops = self._option_flops(first, result, rows, plan, answers) if self.args.count_flops else None
        self._log(first, result, 0, flops, option_selections=self._option_selections(result, plan, n))
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
    def _log(self, request: Request, result, b: int, flops: dict | None, **extra) -> None:
        kept = result.kept_selection()
        entry = {"pipeline": self.label, "budget": self.k, "visual_tokens_kept": result.kept(b),
                 "visual_tokens_to_lm": int(result.inputs.n_visual[b]),
                 "kept_indices": None if kept is None else kept.indices[b][kept.valid[b]].tolist(),
                 "flops": flops, **extra}
        previous = self.logs.get(request.key)
        if previous is not None and flops is not None and previous.get("flops"):  # a repeated request: summed
            entry["flops"] = {k: previous["flops"][k] + flops[k] for k in flops}
        self.logs[request.key] = entry

    def _shape(self, request: Request, result, b: int, *more) -> tuple:
        adapter = self.run.adapter
        prompt = len(adapter.tokenize(adapter.prompt_suffix.format(question=request.question)))
        return (result.resolution, prompt, tuple(n[b] for _, n in result.trace), *more)

    def _generation_flops(self, request: Request, result, b: int) -> dict:
        """FLOPs by stage of answering one request alone (measure.count_stage_flops on its own image and
        question, decoding as many tokens as it generated), memoised by shape."""
        from qgsa_bench.experiments.measure import Case, count_stage_flops

        tokens = max(len(result.generated[b]), 1)
        key = self._shape(request, result, b, "generate", tokens)
        if key not in self.flop_counts:
            pixels = self.run.adapter.pixel_values([request.image], result.resolution)
            with self.run.engine.same_draws():
                counted = count_stage_flops(Case(self.label, self.run, self.k), pixels, [request.question], tokens)
            self.flop_counts[key] = stage_totals(counted, tokens)
        return dict(self.flop_counts[key])

    def _option_flops(self, request: Request, result, rows, plan, answers: list[str]) -> dict:
        """FLOPs by stage of one question's options: the selecting pass (vision, select, prefill; no decoding)
        and `score`, the teacher-forced pass of every option, memoised by shape."""
        from qgsa_bench.efficiency.flops import count_flops
        from qgsa_bench.experiments.measure import Case, count_stage_flops
        from qgsa_bench.run.lm import answer_logprob_greedy

        adapter = self.run.adapter
        lengths = tuple(len(adapter.tokenize(adapter.answer_prefix + a)) for a in answers)
        key = self._shape(request, result, 0, "options", lengths)
        if key not in self.flop_counts:
            pixels = adapter.pixel_values([request.image], result.resolution)
            with self.run.engine.same_draws():
                counted = count_stage_flops(Case(self.label, self.run, self.k), pixels, [request.question], 1)
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
