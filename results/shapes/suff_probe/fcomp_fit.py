"""Can f_comp alone learn a per-type budget from --suff-budget's targets? And what if its gradients are
scaled down (as one global clip norm, dominated by the scorer, does in joint training)?

    python3 results/shapes/suff_probe/fcomp_fit.py > results/shapes/suff_probe/fcomp_fit.txt

k* from losses.sufficient_budget (grid 4, 8, 16, 32; tolerance 0.5 nats) on 200 training questions;
a freshly initialised QGSA module's f_comp fitted with L_budget alone (AdamW lr 1e-3, 1,200 steps of 8);
printed: the mean k_cont per question type after fitting.
"""
import collections, torch
from qgsa_bench.build import build
from qgsa_bench.data import shapes
from qgsa_bench.qgsa import losses
b = build("runs/shapes/base", weights="pretrained", device="cpu", dtype="fp32")
a, P, M = b.adapter, b.pipeline, b.module
samples = shapes.generate(100, seed=0, split="train")
Q, K, T = [], [], []
for start in range(0, len(samples), 25):
    ch = samples[start:start+25]; qs=[s.question for s in ch]
    with torch.no_grad():
        V = a.patch_features(a.pixel_values([s.image for s in ch], a.image_size))
    p = losses.attribution_targets(a, V, qs, [s.answers[0] for s in ch])
    K.append(losses.sufficient_budget(a, P.connector_groups(196, V.device), V, qs, [s.answers[0] for s in ch], p, [4,8,16,32], 0.5))
    with torch.no_grad(): Q.append(a.question_embedding(qs))
    T += [s.question_type for s in ch]
Q, K = torch.cat(Q), torch.cat(K)
torch.manual_seed(0)
for clipscale in [1.0, 1e-6]:
    f = build("runs/shapes/base", weights="pretrained", device="cpu", dtype="fp32").module
    f.train()
    opt = torch.optim.AdamW(f.f_comp.parameters(), lr=1e-3, weight_decay=0.01)
    for it in range(1200):
        idx = torch.randint(0, len(Q), (8,))
        c = f.f_comp(Q[idx]); loss = losses.budget_regression(f.k_continuous(c), K[idx], 4, 32)
        opt.zero_grad(); loss.backward()
        for p_ in f.f_comp.parameters(): p_.grad *= clipscale
        opt.step()
    with torch.no_grad(): c = f.f_comp(Q)
    kk = f.k_continuous(c)
    print("grad scale", clipscale, {t: round(float(kk[[i for i,x in enumerate(T) if x==t]].mean()),1) for t in sorted(set(T))})
