"""How many patches hold 50% / 80% of the base's own answer attribution p*, per question type.

    python3 results/shapes/attr_budget_by_type.py runs/shapes/base > results/shapes/attr_budget_by_type.txt

p* is what `qgsa train --lambda-attr` uses (qgsa_bench.qgsa.losses.attribution_targets); k* is what
`--attr-budget` regresses f_comp on (losses.attribution_budget, unclamped here: k in [1, N]).
100 training images of the shapes set, two questions each.
"""

import collections
import sys

import torch

from qgsa_bench.build import build
from qgsa_bench.data import shapes
from qgsa_bench.qgsa import losses

built = build(sys.argv[1], weights="pretrained", device="cpu", dtype="fp32", seed=0)
a = built.adapter
samples = shapes.generate(100, seed=0, split="train")
k_star = collections.defaultdict(list)
for start in range(0, len(samples), 25):
    chunk = samples[start:start + 25]
    with torch.no_grad():
        V = a.patch_features(a.pixel_values([s.image for s in chunk], a.image_size))
    p = losses.attribution_targets(a, V, [s.question for s in chunk], [s.answers[0] for s in chunk])
    for cover in (0.5, 0.8):
        for s, k in zip(chunk, losses.attribution_budget(p, cover, 1, V.shape[1])):
            k_star[(s.question_type, cover)].append(float(k))
print("question_type,cover,n,k_star_mean,k_star_std")
for (qtype, cover), ks in sorted(k_star.items()):
    t = torch.tensor(ks)
    print(f"{qtype},{cover},{len(ks)},{float(t.mean()):.1f},{float(t.std()):.1f}")
