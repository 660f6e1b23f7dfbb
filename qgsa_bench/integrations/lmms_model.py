"""The qgsa model class lmms-eval loads (`QGSALMM`, model id "qgsa"): a thin wrapper of lmms.Bridge. Importing
this module imports lmms-eval (its base class); `qgsa lmms-eval` and lmms-eval's own registry (the
`lmms_eval.models` entry point, `manifest`) are its only importers.

    python -m lmms_eval --model qgsa --model_args model=results/shapes/base-model,pipeline=fastv@lm:2,k=8 ...
"""

from __future__ import annotations

from lmms_eval.api.model import lmms

from qgsa_bench import QGSAError
from qgsa_bench.integrations.lmms import MODEL_ID, Bridge, Request, filelock_workaround, parse_model_args


class QGSALMM(lmms):
    """lmms-eval's model interface over a Bridge: generate_until and loglikelihood (lmms.py says what of each
    request is honoured). Built from model arguments (lmms.ModelArgs; raises QGSAError for arguments it cannot
    parse, a model it cannot build, or a selector that cannot sit where asked), or around an existing Bridge
    (`around`, what `qgsa lmms-eval` does)."""

    is_simple = True

    def __init__(self, bridge: Bridge | None = None, **model_args):
        super().__init__()
        self.workaround = filelock_workaround()  # lmms-eval's own CLI calls simple_evaluate after building this
        if bridge is None:
            from qgsa_bench.build import build

            args = parse_model_args(model_args)
            bridge = Bridge(build(args.model, args.weights, args.device, args.dtype, args.checkpoint, args.seed),
                            args)
        self.bridge = bridge

    @classmethod
    def around(cls, bridge: Bridge) -> "QGSALMM":
        return cls(bridge=bridge)

    @property
    def device(self):
        return self.bridge.built.device

    def _request(self, instance) -> Request:
        """A Request from an Instance whose arguments are (context, extra, doc_to_visual, doc_id, task, split)."""
        context, extra, doc_to_visual, doc_id, task, split = instance.args[:6]
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if callable(doc_to_visual) else doc_to_visual
        visuals = [v for v in (visuals or []) if v is not None]
        if not visuals:
            raise QGSAError(f"task {task} gives document {doc_id} no image: the {MODEL_ID} model answers questions "
                            f"about one image")
        if callable(extra):  # a loglikelihood task's doc_to_target
            extra = extra(doc)
        seed_key = str(doc.get("question_id", doc.get("id", f"{task}/{split}/{doc_id}")))
        return Request((task, doc_id), str(context), visuals[0], seed_key, extra)

    def generate_until(self, requests) -> list[str]:
        return self.bridge.generate([self._request(r) for r in requests])

    def loglikelihood(self, requests) -> list:
        """(-log P(continuation | context, image), is_greedy) per request: lmms-eval 0.7.3 scores a multiple-choice
        question by the option with the SMALLEST first element (api/task.py: "we return the actual loss ... we just
        use the argmin"; its own HF models return their cross-entropy loss), so the summed log-probability is
        returned negated: the option picked is the most probable one, as in `qgsa eval`. Wrapped in lmms-eval's
        GenerationResult where its evaluator would turn a bare pair into text (`tuple_survives`)."""
        pairs = [(-logp, greedy) for logp, greedy in self.bridge.loglikelihood([self._request(r) for r in requests])]
        if tuple_survives():
            return pairs
        from lmms_eval.api.instance import GenerationResult

        return [GenerationResult(text=pair) for pair in pairs]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise QGSAError(f"the {MODEL_ID} model answers one question per image; multi-round tasks "
                        f"(generate_until_multi_round) are refused: run single-round tasks")


def tuple_survives() -> bool:
    """Whether lmms-eval's evaluator keeps a loglikelihood pair as it is. lmms-eval 0.7.3 passes every model output
    through `unwrap_generation_output`, which turns a (float, bool) pair into its text ("(-1.2, True)"), and every
    multiple-choice task then fails in process_results ("too many values to unpack"); a GenerationResult's `text`
    is passed on untouched."""
    from lmms_eval.api.instance import unwrap_generation_output

    return not isinstance(unwrap_generation_output((0.0, True))[0], str)


def manifest():
    """The `lmms_eval.models` entry point's payload: model id "qgsa" -> QGSALMM."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.QGSALMM")
