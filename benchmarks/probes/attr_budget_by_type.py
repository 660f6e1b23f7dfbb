"""How many patches hold 50% / 80% of the base's own answer attribution p*, per question type?

    python3 benchmarks/probes/attr_budget_by_type.py --base results/shapes/base-model \
        --out results/shapes/attr_budget_by_type.txt          # about a minute on 2 CPU cores

Inputs: a base model folder (`--base`, the committed `results/shapes/base-model`); no QGSA checkpoint
(only the base's adapter is used). p* is what `qgsa train --lambda-attr` uses
(qgsa_bench.qgsa.losses.attribution_targets); k* is what `--attr-budget` regresses f_comp on
(losses.attribution_budget, unclamped here: k in [1, N]). `--images` training images of the shapes set
(default 100), two questions each. No command prints this: `qgsa train --attr-budget` computes k* only
as a training target.

Output (`--out`, also printed): CSV `question_type,cover,n,k_star_mean,k_star_std`; the committed one is
results/shapes/attr_budget_by_type.txt (README, "Budgets per question type").
"""

from __future__ import annotations

import argparse
import collections

from _common import probe_parser, run_options, write_lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = probe_parser(__doc__, "write the CSV here too (default: stdout only)")
    parser.add_argument("--images", type=int, default=100, help="training images (two questions each)")
    parser.add_argument("--covers", type=float, nargs="+", default=[0.5, 0.8], help="shares of p* to cover")
    parser.add_argument("--batch", type=int, default=25, help="questions per forward pass")
    return run_options(parser, "seed of the training images").parse_args(argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    import torch

    from qgsa_bench.build import build
    from qgsa_bench.data import shapes
    from qgsa_bench.qgsa import losses

    a = build(args.base, weights="pretrained", device=args.device, dtype="fp32", seed=0).adapter
    samples = shapes.generate(args.images, seed=args.seed, split="train")
    k_star = collections.defaultdict(list)
    for start in range(0, len(samples), args.batch):
        chunk = samples[start:start + args.batch]
        with torch.no_grad():
            V = a.patch_features(a.pixel_values([s.image for s in chunk], a.image_size))
        p = losses.attribution_targets(a, V, [s.question for s in chunk], [s.answers[0] for s in chunk])
        for cover in args.covers:
            for s, k in zip(chunk, losses.attribution_budget(p, cover, 1, V.shape[1])):
                k_star[(s.question_type, cover)].append(float(k))
    lines = ["question_type,cover,n,k_star_mean,k_star_std"]
    for (qtype, cover), ks in sorted(k_star.items()):
        t = torch.tensor(ks)
        std = float(t.std()) if len(ks) > 1 else 0.0
        lines.append(f"{qtype},{cover},{len(ks)},{float(t.mean()):.1f},{std:.1f}")
    print("\n".join(lines), flush=True)
    return write_lines(lines, args.out)


if __name__ == "__main__":
    main()
