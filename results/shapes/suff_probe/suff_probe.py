"""How many patches does each answer need? For 200 training questions: the smallest k of a grid from
which the base, given only the top-k patches of its own attribution p* (losses.attribution_targets,
which reads the gold answer) through its connector with the others zeroed, answers right at every
larger k of the grid; None: wrong even with all 196 patches.

    python3 results/shapes/suff_probe/suff_probe.py runs/shapes/base > results/shapes/suff_probe/output.txt

(The qgsa-attr checkpoint is loaded only to build the pipeline; its module is not used.)
"""
import collections, torch
from qgsa_bench.build import build
from qgsa_bench.data import shapes
from qgsa_bench.metrics import exact_match
from qgsa_bench.qgsa import losses
from qgsa_bench.qgsa.selector import Selection
import sys
b = build(sys.argv[1] if len(sys.argv) > 1 else "runs/shapes/base", weights="pretrained", device="cpu", dtype="fp32", checkpoint="runs/shapes/qgsa-attr/checkpoint.pt")
a, P = b.adapter, b.pipeline
samples = shapes.generate(100, seed=0, split="train")
grid = [4, 8, 16, 32, 64, 128, 196]
kstar = collections.defaultdict(list)
for start in range(0, len(samples), 25):
    ch = samples[start:start+25]
    qs = [s.question for s in ch]
    with torch.no_grad():
        V = a.patch_features(a.pixel_values([s.image for s in ch], a.image_size))
    p = losses.attribution_targets(a, V, qs, [s.answers[0] for s in ch])
    order = p.argsort(dim=1, descending=True)
    ok = torch.zeros(len(ch), len(grid), dtype=torch.bool)
    with torch.no_grad():
        for j, k in enumerate(grid):
            idx = order[:, :k]
            sel = Selection(indices=idx, valid=torch.ones_like(idx, dtype=torch.bool), k=torch.full((len(ch),), k), scores=None)
            tokens, valid = P.connector_tokens(V, sel)
            for i, ids in enumerate(a.generate(a.build_inputs(tokens, qs, valid), 3)):
                ok[i, j] = bool(exact_match(a.decode_text(ids), ch[i].answers))
    for i, s in enumerate(ch):
        first = next((grid[j] for j in range(len(grid)) if ok[i, j:].all()), None)
        kstar[s.question_type].append(first)
print("question_type: k* = smallest k (attribution-ranked top-k, zero fill) from which the answer stays right; None = wrong even dense")
for t, v in sorted(kstar.items()):
    c = collections.Counter(v)
    print(t, len(v), {k: c[k] for k in grid + [None] if c[k]})
