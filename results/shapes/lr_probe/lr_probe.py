"""Why base-train's connector + LM phase uses lr 3.5e-4: held-out accuracy of the first 2,000 steps at
several peak learning rates, all from one vision encoder.

    python3 results/shapes/lr_probe/lr_probe.py 2e-3 7e-4 3.5e-4     # about 25 minutes on 2 CPU cores

Phase 1 exactly as `qgsa base-train` runs it (3,000 vision steps, lr 2e-3 cosine, seed 0); then, for
each lr, phase 2 as base-train runs it (vision frozen, 8 images x 6 questions a step, warm-up 100,
cosine over 8,000 steps) but stopped after 2,000 steps, with held-out accuracy on 400 test questions
(200 images) every 500 steps. The committed logs (phase1.log, lr_*.log) come from this code, run as
two processes at one thread each (the 2e-3 run was stopped at step 1,000, clearly behind).
"""

import sys
import time

import torch

from qgsa_bench import basetrain as bt
from qgsa_bench.data import shapes
from qgsa_bench.models.idefics3 import Idefics3Adapter
from qgsa_bench.train import lr_factor


def fresh():
    tok = bt.build_tokenizer()
    model, preset = bt.new_model(tok, 0, torch.device("cpu"))
    return model, Idefics3Adapter(bt.wrap(model, tok, preset, "lr-probe"))


def phase1(steps=3000, lr=2e-3):
    model, ad = fresh()
    model.train()
    torch.manual_seed(1)
    heads = bt.PatchHeads(model.config.vision_config.hidden_size)
    params = [*ad.vision_model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, 100))
    started, total = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        imgs = shapes.generate(8, seed=-step, split="train", questions=1)
        V = ad.patch_features(ad.pixel_values([s.image for s in imgs], ad.image_size))
        total += bt._optimise(heads.loss(V, imgs, ad), opt, params, "x", "y")
        sch.step()
        if step % 500 == 0:
            print(step, total / 500, time.perf_counter() - started, flush=True)
            total = 0.0
    model.eval()
    print(bt.patch_accuracy(ad, heads, shapes.generate(32, seed=7, split="val")), flush=True)
    return model.state_dict()


def phase2(state, lr, steps=2000, schedule=8000):
    model, ad = fresh()
    model.load_state_dict(state)
    model.train()
    ad.vision_model.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, schedule, 100))
    held = shapes.generate(200, seed=0, split="test")
    started, total = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        batch = shapes.generate(8, seed=step, split="train", questions=6)
        total += bt._optimise(bt.dense_loss(ad, batch, 6), opt, params, "x", "y")
        sch.step()
        if step % 500 == 0:
            model.eval()
            acc = bt.dense_accuracy(ad, held)
            model.train()
            print(step, round(total / 500, 4), round(time.perf_counter() - started),
                  {k: round(v, 1) for k, v in acc.items()}, flush=True)
            total = 0.0


if __name__ == "__main__":
    state = phase1()
    for lr in sys.argv[1:]:
        print(f"lr {lr}", flush=True)
        phase2(state, float(lr))
