"""The qgsa model class lmms-eval loads (`QGSALMM`, model id "qgsa"): a thin wrapper of lmms.Bridge. Importing
this module imports lmms-eval (its base class); `qgsa lmms-eval` and lmms-eval's own registry (the
`lmms_eval.models` entry point, `manifest`) are its only importers.

    python -m lmms_eval --model qgsa --model_args model=results/shapes/base-model,pipeline=fastv@lm:2,k=8 ...

Under a launch of several processes (accelerate launch, torchrun) the model joins the launch's process group
(parallel.join_world) and declares its rank and world size (lmms-eval's `rank`/`world_size`), and lmms-eval
itself shards and gathers: its evaluator deals document d of a task to process d mod W (utils.create_iterator),
pads the processes with fewer requests with copies of their last one so that each runs as many, gathers the
logged samples and per-sample metrics to process 0 (torch.distributed.gather_object) and aggregates there. The
padding copies (Instance.metadata["__padding_only__"]) are answered with an empty text or (0.0, False) and
never reach the model: lmms-eval discards their answers, and this model runs no collective inside a forward,
so no process must match another's number of forward passes.
"""

from __future__ import annotations

from lmms_eval.api.model import lmms

from qgsa_bench import QGSAError
from qgsa_bench.integrations.lmms import MODEL_ID, Bridge, Request, filelock_workaround, parse_model_args

PADDING = "__padding_only__"  # lmms-eval 0.7.3's mark of a request copied only to even out the processes' counts


class QGSALMM(lmms):
    """lmms-eval's model interface over a Bridge: generate_until and loglikelihood (lmms.py says what of each
    request is honoured). Built from model arguments (lmms.ModelArgs; raises QGSAError for arguments it cannot
    parse, a model it cannot build, or a selector that cannot sit where asked), or around an existing Bridge
    (`around`, what `qgsa lmms-eval` does). Its image input follows the model arguments (lmms.Bridge: by default
    the model's own views; one warning line on stderr where its pipeline takes one view only). `rank`, `world_size`: this process among the launch's (module
    docstring); parallel.WorldLost when the process group cannot be joined."""

    is_simple = True

    def __init__(self, bridge: Bridge | None = None, **model_args):
        super().__init__()
        from qgsa_bench.experiments.parallel import join_world

        self.workaround = filelock_workaround()  # lmms-eval's own CLI calls simple_evaluate after building this
        if bridge is None:
            from qgsa_bench.build import build

            args = parse_model_args(model_args)
            world = join_world(args.device)  # lmms-eval's CLI: joins the group its Accelerator started
            bridge = Bridge(build(args.model, args.weights, args.device, args.dtype, args.checkpoint, args.seed),
                            args, warn=say)
        else:
            world = join_world(bridge.args.device)  # `qgsa lmms-eval` joined before building: the same world
        self.bridge = bridge
        self._rank, self._world_size = world.rank, world.size

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
        return answered(requests, "", lambda real: self.bridge.generate([self._request(r) for r in real]))

    def loglikelihood(self, requests) -> list:
        """(-log P(continuation | context, image), is_greedy) per request: lmms-eval 0.7.3 scores a multiple-choice
        question by the option with the SMALLEST first element (api/task.py: "we return the actual loss ... we just
        use the argmin"; its own HF models return their cross-entropy loss), so the summed log-probability is
        returned negated: the option picked is the most probable one, as in `qgsa eval`. Wrapped in lmms-eval's
        GenerationResult where its evaluator would turn a bare pair into text (`tuple_survives`)."""
        def score(real):
            return [(-logp, greedy) for logp, greedy in self.bridge.loglikelihood([self._request(r) for r in real])]

        pairs = answered(requests, (0.0, False), score)
        if tuple_survives():
            return pairs
        from lmms_eval.api.instance import GenerationResult

        return [GenerationResult(text=pair) for pair in pairs]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise QGSAError(f"the {MODEL_ID} model answers one question per image; multi-round tasks "
                        f"(generate_until_multi_round) are refused: run single-round tasks")


def say(line: str) -> None:
    """A warning of lmms-eval's own CLI run (e.g. the input falling back to one view): one line on stderr."""
    import sys

    print(f"warning: {line}", file=sys.stderr)


def answered(requests, placeholder, answer) -> list:
    """`answer(real requests)` in the requests' order, `placeholder` at lmms-eval's padding copies (module
    docstring), which are not answered."""
    real = [i for i, r in enumerate(requests) if not (getattr(r, "metadata", None) or {}).get(PADDING)]
    out = [placeholder] * len(requests)
    for i, value in zip(real, answer([requests[i] for i in real]) if real else []):
        out[i] = value
    return out


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
