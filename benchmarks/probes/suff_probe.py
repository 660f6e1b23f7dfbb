"""How many patches does each answer need? For each training question: the smallest k of a grid from which
the base, given only the top-k patches of its own attribution p* (losses.attribution_targets, which reads
the gold answer) through its connector with the others zeroed, answers right at every larger k of the
grid; None: wrong even with all N patches.

    python3 benchmarks/probes/suff_probe.py --base results/shapes/base-model \
        --out results/shapes/suff_probe/output.txt            # a few minutes on 2 CPU cores

Inputs: a base model folder (`--base`, the committed `results/shapes/base-model`); no QGSA checkpoint.
The masked connector path is qgsa_bench.run.post_vision.connector_tokens with a randomly initialised
QGSA module of zero fill (the module is read only for its fill; its scorer is not used). `--images`
training images of the shapes set (default 100, two questions each), `--grid` the budgets tried (the
last should be N = 196 for "dense"). No command prints this: `qgsa train --suff-budget` asks a related
question (log-probability within a tolerance, not exact-match answers) only as a training target, and
benchmarks/probes/fcomp_fit.py fits f_comp on that target.

Output (`--out`, also printed): one line per question type, `TYPE n {k*: count}`; the committed one is
results/shapes/suff_probe/output.txt (README, "Against the targets").
"""

from __future__ import annotations

import argparse
import collections

from _common import probe_parser, run_options, write_lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = probe_parser(__doc__, "write the table here too (default: stdout only)")
    parser.add_argument("--images", type=int, default=100, help="training images (two questions each)")
    parser.add_argument("--grid", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 196],
                        help="budgets tried, ascending")
    parser.add_argument("--batch", type=int, default=25, help="questions per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=3)
    return run_options(parser, "seed of the training images").parse_args(argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    import torch

    from qgsa_bench.build import build
    from qgsa_bench.data import shapes
    from qgsa_bench.metrics import exact_match
    from qgsa_bench.qgsa import losses
    from qgsa_bench.run.post_vision import connector_tokens
    from qgsa_bench.selectors.selection import Selection

    built = build(args.base, weights="pretrained", device=args.device, dtype="fp32", seed=0)
    a, module = built.adapter, built.module
    if module.fill is not None:
        raise SystemExit("the QGSA module must have zero fill")
    grid = sorted(args.grid)
    samples = shapes.generate(args.images, seed=args.seed, split="train")
    kstar = collections.defaultdict(list)
    for start in range(0, len(samples), args.batch):
        chunk = samples[start:start + args.batch]
        qs = [s.question for s in chunk]
        with torch.no_grad():
            V = a.patch_features(a.pixel_values([s.image for s in chunk], a.image_size))
        if grid[-1] > V.shape[1]:
            raise SystemExit(f"--grid {grid[-1]} exceeds N = {V.shape[1]} patches")
        p = losses.attribution_targets(a, V, qs, [s.answers[0] for s in chunk])
        order = p.argsort(dim=1, descending=True)
        ok = torch.zeros(len(chunk), len(grid), dtype=torch.bool)
        with torch.no_grad():
            for j, k in enumerate(grid):
                idx = order[:, :k]
                sel = Selection(indices=idx, valid=torch.ones_like(idx, dtype=torch.bool),
                                k=torch.full((len(chunk),), k), scores=None)
                tokens, valid = connector_tokens(a, module, V, sel)
                for i, ids in enumerate(a.generate(a.build_inputs(tokens, qs, valid), args.max_new_tokens)):
                    ok[i, j] = bool(exact_match(a.decode_text(ids), chunk[i].answers))
        for i, s in enumerate(chunk):
            first = next((grid[j] for j in range(len(grid)) if ok[i, j:].all()), None)
            kstar[s.question_type].append(first)
    lines = ["question_type: k* = smallest k (attribution-ranked top-k, zero fill) from which the answer stays "
             "right; None = wrong even dense"]
    for t, v in sorted(kstar.items()):
        c = collections.Counter(v)
        lines.append(f"{t} {len(v)} { {k: c[k] for k in grid + [None] if c[k]} }")
    print("\n".join(lines), flush=True)
    return write_lines(lines, args.out)


if __name__ == "__main__":
    main()
