"""A lead, not a pipeline option: what if unselected patches were filled with an empty canvas's features
instead of zeros before the connector (`--projection connector`)?

    python3 benchmarks/probes/fill_probe.py --base results/shapes/base-model \
        --checkpoint runs/shapes/qgsa-attr/checkpoint.pt \
        --out results/shapes/fill_probe/output.txt            # k from f_comp (23), about 3 minutes
    python3 benchmarks/probes/fill_probe.py ... --k 48        # a fixed k

Inputs: a base model folder (`--base`, the committed `results/shapes/base-model`) and a QGSA checkpoint
trained with `--projection connector` (`--checkpoint`; results/shapes/run.sh trains qgsa-attr into
runs/shapes/qgsa-attr/checkpoint.pt; checkpoints are not committed). On the `--images` test images of
run.sh's evals (200, two questions each) it answers with the `qgsa` and `random` pipelines under each
fill: "zero" (what the pipeline does), "blank-pos" (the vision encoder's features of an empty background
image, per position), "blank-mean" (their mean, one vector). The fill goes in through the package's own
seam: a copy of the checkpoint's QGSA module whose `fill` is set to those features (what `--fill learned`
trains, here fixed), run on the same model with Engine.with_module, so
qgsa_bench.run.post_vision.connector_tokens feeds the connector V*m + (1-m)*fill. (blank-pos sets a
per-position fill of shape (N, d_v), which connector_tokens broadcasts like the (d_v,) vector.)

QGSA's counting answers over-count with zeroed patches (README), as if every fragment of an object were
an object. A fill is image-independent (it carries nothing from the unselected patches); the general
version is the learned vector of `qgsa train --fill learned`, which trains a fill but does not try this
fixed one, so no command does this probe's job.

Output (`--out`, also printed): a `#` header line, then one line per fill, `FILL {pipeline/type:
accuracy %}`. The committed one is results/shapes/fill_probe/output.txt: the f_comp run and the --k 48 /
--k 96 runs, from the earlier version of this script, which patched the adapter's connector instead (the
same connector input, checked tensor for tensor; but its random pipeline drew on from one generator across
fills, where each fill now starts from the same seed, so random's blank-fill numbers differ).
"""

from __future__ import annotations

import argparse
import collections
import copy

from _common import probe_parser, run_options, write_lines

FILLS = ("zero", "blank-pos", "blank-mean")


def parse_args(argv=None) -> argparse.Namespace:
    parser = probe_parser(__doc__, "write the result lines here too (default: stdout only)")
    parser.add_argument("--checkpoint", required=True,
                        help="QGSA checkpoint trained with --projection connector "
                             "(run.sh's qgsa-attr: runs/shapes/qgsa-attr/checkpoint.pt)")
    parser.add_argument("--k", type=int, default=None, help="fixed budget (default: f_comp's k per question)")
    parser.add_argument("--images", type=int, default=200, help="test images (two questions each)")
    parser.add_argument("--fills", nargs="+", choices=FILLS, default=list(FILLS))
    parser.add_argument("--pipelines", nargs="+", default=["qgsa", "random"])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=25, help="questions per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=3)
    return run_options(parser, "seed of the random selector's draws").parse_args(argv)


def filled(module, fill):
    """A copy of `module` whose unselected patches become `fill` ((d_v,) or (N, d_v)); None: zero fill."""
    import torch

    from qgsa_bench.qgsa.config import QGSAConfig

    module = copy.deepcopy(module)
    module.config = QGSAConfig.from_dict({**module.config.to_dict(), "fill": "zero" if fill is None else "learned"})
    module.fill = None if fill is None else torch.nn.Parameter(fill.detach().clone(), requires_grad=False)
    return module


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    import torch
    from PIL import Image

    from qgsa_bench.build import build
    from qgsa_bench.data import shapes
    from qgsa_bench.metrics import exact_match

    built = build(args.base, weights="pretrained", device=args.device, dtype="fp32", checkpoint=args.checkpoint,
                  seed=args.seed)
    a = built.adapter
    if built.module.config.projection != "connector":
        raise SystemExit(f"{args.checkpoint} projects with {built.module.config.projection!r}: the fill only "
                         "applies to a checkpoint trained with --projection connector")
    blank = Image.new("RGB", (args.resolution, args.resolution), shapes.BACKGROUND)
    with torch.no_grad():
        Vb = a.patch_features(a.pixel_values([blank], args.resolution))[0]  # (N, d_v)
    fills = {"zero": None, "blank-pos": Vb, "blank-mean": Vb.mean(0)}
    samples = shapes.generate(args.images, seed=0, split="test")
    lines = [f"# {args.checkpoint}, k {'from f_comp' if args.k is None else args.k}, {len(samples)} test questions"]
    print(lines[0], flush=True)
    for name in args.fills:
        engine = built.engine.with_module(filled(built.module, fills[name]))
        hits = collections.defaultdict(list)
        with torch.no_grad():
            for pipeline in args.pipelines:
                run = engine.run(pipeline)
                for i in range(0, len(samples), args.batch):
                    ch = samples[i:i + args.batch]
                    result = run.answer([s.image for s in ch], [s.question for s in ch], args.resolution, args.k,
                                        max_new_tokens=args.max_new_tokens)
                    for s, ids in zip(ch, result.generated):
                        score = exact_match(a.decode_text(ids), s.answers)
                        hits[(pipeline, "all")].append(score)
                        hits[(pipeline, s.question_type)].append(score)
        lines.append(f"{name} { {f'{p}/{t}': round(100 * sum(v) / len(v), 1) for (p, t), v in sorted(hits.items())} }")
        print(lines[-1], flush=True)
    return write_lines(lines, args.out)


if __name__ == "__main__":
    main()
