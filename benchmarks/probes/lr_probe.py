"""Why base-train's connector + LM phase uses lr 3.5e-4: held-out accuracy of the first 2,000 steps at
several peak learning rates, all from one vision encoder.

    python3 benchmarks/probes/lr_probe.py 2e-3 7e-4 3.5e-4 --out results/shapes/lr_probe
                                                            # about 25 minutes on 2 CPU cores

Inputs: none but the learning rates (positional): the model is a fresh `shapes-base` Idefics3 from
qgsa_bench.experiments.basetrain (seed 0), as `qgsa base-train` makes it; no base folder, no checkpoint. Phase 1 is
base-train's own (basetrain.vision_warmup: `--vision-steps` 3,000 vision steps, `--vision-lr` 2e-3 with
warm-up and cosine decay, seed 0); then, for each lr, phase 2 as base-train runs it (vision frozen,
8 images x 6 questions a step, warm-up 100, cosine over `--schedule` 8,000 steps, qgsa_bench.experiments.train.lr_factor)
but stopped after `--steps` 2,000, with held-out accuracy on `--held-out-images` 200 test images
(400 questions) every `--eval-every` 500 steps. `qgsa base-train --steps 2000` would decay its cosine to
zero at step 2,000 instead, so no command does this exactly.

Output (`--out DIR`, also printed): phase1.log (step, mean patch loss over the last interval, seconds; then
the patch heads' held-out accuracy) and lr_<LR>.log per learning rate (step, mean loss, seconds, held-out
accuracy per question type), named with LR as given. The committed logs are results/shapes/lr_probe/
(README, "base-train"); they come from the earlier version of this script (the same phase 1 with its own
copy of the loop, whose last line measured the heads on 32 validation images where vision_warmup uses 8),
run as two processes at one thread each (`--threads 1`); the 2e-3 run was stopped at step 1,000, clearly
behind. On today's package both versions give the same phase 1 to the last digit (mean patch loss 1.12682
at step 500), slightly off the committed 1.12894: the logs predate later package changes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lrs", nargs="+", help="peak learning rates of phase 2, e.g. 2e-3 7e-4 3.5e-4")
    parser.add_argument("--out", type=Path, help="folder for phase1.log and lr_<LR>.log (default: stdout only)")
    parser.add_argument("--vision-steps", type=int, default=3000)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=2000, help="phase-2 steps run per learning rate")
    parser.add_argument("--schedule", type=int, default=8000, help="phase-2 steps the cosine decays over")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--held-out-images", type=int, default=200, help="test images (two questions each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args(argv)


class Log:
    """Lines to stdout and, with a folder, to one file in it."""

    def __init__(self, folder: Path | None, name: str):
        self.handle = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self.handle = (folder / name).open("w")

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        if self.handle:
            self.handle.write(line + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def fresh():
    import torch

    from qgsa_bench.experiments import basetrain as bt
    from qgsa_bench.models.idefics3 import Idefics3Adapter

    tok = bt.build_tokenizer()
    model, preset = bt.new_model(tok, 0, torch.device("cpu"))
    return model, Idefics3Adapter(bt.wrap(model, tok, preset, "lr-probe"))


def phase1(args, log: Log) -> dict:
    """base-train's phase 1 (basetrain.vision_warmup, seed 0): the state dict of the whole model after it."""
    import torch

    from qgsa_bench.experiments import basetrain as bt

    model, ad = fresh()
    model.train()
    cfg = bt.BaseTrainConfig(vision_steps=args.vision_steps, vision_lr=args.vision_lr, seed=0)
    with torch.random.fork_rng(devices=[]):  # seeded as run_base_train seeds them
        torch.manual_seed(cfg.seed + 1)
        heads = bt.PatchHeads(model.config.vision_config.hidden_size)
    rows: list[dict] = []

    def progress(message, n):
        if n == 1 and len(rows) % args.eval_every == 0:
            last = rows[-args.eval_every:]
            log(len(rows), sum(r["loss"] for r in last) / len(last), last[-1]["elapsed_s"])

    vision = bt.vision_warmup(ad, heads, cfg, rows, time.perf_counter(), progress)
    model.eval()
    log({k: v for k, v in vision.items() if k.startswith("patch_")})
    return model.state_dict()


def phase2(state, lr: float, args, log: Log) -> None:
    import torch

    from qgsa_bench.experiments import basetrain as bt
    from qgsa_bench.data import shapes
    from qgsa_bench.experiments.train import lr_factor

    model, ad = fresh()
    model.load_state_dict(state)
    model.train()
    ad.vision_model.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.schedule, 100))
    held = shapes.generate(args.held_out_images, seed=0, split="test")
    started, total = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        batch = shapes.generate(8, seed=step, split="train", questions=6)
        total += bt._optimise(bt.dense_loss(ad, batch, 6), opt, params, f"step {step}", "the learning rate")
        sch.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            acc = bt.dense_accuracy(ad, held)
            model.train()
            n = step % args.eval_every or args.eval_every
            log(step, round(total / n, 4), round(time.perf_counter() - started),
                {k: round(v, 1) for k, v in acc.items()})
            total = 0.0


def main(argv=None) -> None:
    args = parse_args(argv)
    lrs = [(text, float(text)) for text in args.lrs]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    log = Log(args.out, "phase1.log")
    state = phase1(args, log)
    log.close()
    for text, lr in lrs:
        log = Log(args.out, f"lr_{text}.log")
        print(f"lr {text}", flush=True)
        phase2(state, lr, args, log)
        log.close()


if __name__ == "__main__":
    main()
