"""Can f_comp alone learn a per-type budget from --suff-budget's targets? And what if its gradients are
scaled down (as one global clip norm, dominated by the scorer, does in joint training)?

    python3 benchmarks/probes/fcomp_fit.py --base results/shapes/base-model \
        --out results/shapes/suff_probe/fcomp_fit.txt         # a few minutes on 2 CPU cores

Inputs: a base model folder (`--base`, the committed `results/shapes/base-model`); no QGSA checkpoint
(f_comp starts from a freshly initialised QGSA module, qgsa_bench.build.new_module, seed `--seed`).
k* from losses.sufficient_budget (`--grid` 4 8 16 32, `--tolerance` 0.5 nats: what
`qgsa train --suff-budget 0.5` regresses on) for the questions of `--images` training images (default
100, two questions each); f_comp is then fitted with L_budget alone (AdamW lr `--lr` 1e-3, `--steps`
1,200 of `--batch` 8), once per gradient scale of `--grad-scales` (1.0 and 1e-6). `qgsa train
--suff-budget` trains f_comp jointly with the scorer, so no command isolates this.

Output (`--out`, also printed): per gradient scale, the mean k_cont per question type after fitting; the
committed one is results/shapes/suff_probe/fcomp_fit.txt (README, "Budgets per question type").
"""

from __future__ import annotations

import argparse

from _common import probe_parser, run_options, write_lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = probe_parser(__doc__, "write the result lines here too (default: stdout only)")
    parser.add_argument("--images", type=int, default=100, help="training images (two questions each)")
    parser.add_argument("--grid", type=int, nargs="+", default=[4, 8, 16, 32], help="budgets sufficient_budget tries")
    parser.add_argument("--tolerance", type=float, default=0.5, help="nats below the dense log-probability")
    parser.add_argument("--steps", type=int, default=1200, help="f_comp optimisation steps per gradient scale")
    parser.add_argument("--batch", type=int, default=8, help="questions per f_comp step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grad-scales", type=float, nargs="+", default=[1.0, 1e-6],
                        help="f_comp's gradients are multiplied by this before each step")
    parser.add_argument("--chunk", type=int, default=25, help="questions per forward pass of the base")
    return run_options(parser, "seed of the images, the module and the batches").parse_args(argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    import torch

    from qgsa_bench.build import build, new_module
    from qgsa_bench.data import shapes
    from qgsa_bench.qgsa import losses

    a = build(args.base, weights="pretrained", device=args.device, dtype="fp32", seed=args.seed).adapter
    samples = shapes.generate(args.images, seed=args.seed, split="train")
    Q, K, T = [], [], []
    for start in range(0, len(samples), args.chunk):
        ch = samples[start:start + args.chunk]
        qs, answers = [s.question for s in ch], [s.answers[0] for s in ch]
        with torch.no_grad():
            V = a.patch_features(a.pixel_values([s.image for s in ch], a.image_size))
        p = losses.attribution_targets(a, V, qs, answers)
        K.append(losses.sufficient_budget(a, a.unit_patches(V.shape[1], V.device), V, qs, answers, p, args.grid,
                                          args.tolerance))
        with torch.no_grad():
            Q.append(a.question_embedding(qs))
        T += [s.question_type for s in ch]
    Q, K = torch.cat(Q), torch.cat(K)
    lines = []
    torch.manual_seed(args.seed)
    for scale in args.grad_scales:
        f = new_module(a, None, args.seed).to(a.device)
        f.train()
        k_min, k_max = f.config.k_min, f.config.k_max
        opt = torch.optim.AdamW(f.f_comp.parameters(), lr=args.lr, weight_decay=0.01)
        for _ in range(args.steps):
            idx = torch.randint(0, len(Q), (args.batch,))
            loss = losses.budget_regression(f.k_continuous(f.f_comp(Q[idx])), K[idx].to(Q.device), k_min, k_max)
            opt.zero_grad()
            loss.backward()
            for param in f.f_comp.parameters():
                param.grad *= scale
            opt.step()
        with torch.no_grad():
            kk = f.k_continuous(f.f_comp(Q))
        per_type = {t: round(float(kk[[i for i, x in enumerate(T) if x == t]].mean()), 1) for t in sorted(set(T))}
        lines.append(f"grad scale {scale} {per_type}")
        print(lines[-1], flush=True)
    return write_lines(lines, args.out)


if __name__ == "__main__":
    main()
