"""A lead, not a pipeline option: what if unselected patches were filled with an empty canvas's features
instead of zeros before the connector (`--projection connector`)?

    python3 results/shapes/fill_probe/fill_probe.py          # k from f_comp (23), about 3 minutes
    python3 results/shapes/fill_probe/fill_probe.py 48       # fixed k

On the qgsa-attr checkpoint (run.sh) and the 400 test questions of run.sh's evals, it swaps the
adapter's connector input V*m for V*m + (1-m)*fill: "zero" (what the pipeline does), "blank-pos" (the
vision encoder's features of an empty background image, per position), "blank-mean" (their mean, one
vector). QGSA's counting answers over-count with zeroed patches (README), as if every fragment of an
object were an object. A fill is image-independent (it carries nothing from the unselected patches);
a general version would be a learned vector. Output of the runs: output.txt.
"""
import sys, torch, collections
from PIL import Image
from qgsa_bench.build import build
from qgsa_bench.data import shapes
from qgsa_bench.metrics import exact_match
b = build("runs/shapes/base", weights="pretrained", device="cpu", dtype="fp32", checkpoint="runs/shapes/qgsa-attr/checkpoint.pt")
a, P = b.adapter, b.pipeline
blank = Image.new("RGB", (224, 224), shapes.BACKGROUND)
with torch.no_grad():
    Vb = a.patch_features(a.pixel_values([blank], 224))[0]  # (N, d_v)
fills = {"zero": None, "blank-pos": Vb, "blank-mean": Vb.mean(0, keepdim=True).expand_as(Vb)}
orig = a.connect
samples = shapes.generate(200, seed=0, split="test")
k = int(sys.argv[1]) if len(sys.argv) > 1 else None
for name, fill in fills.items():
    def connect(Vm, fill=fill):
        if fill is None or Vm.shape[1] != Vb.shape[0]: return orig(Vm)
        m = (Vm.abs().sum(-1, keepdim=True) > 0).to(Vm.dtype)
        return orig(Vm + (1 - m) * fill)
    a.connect = connect
    hits = collections.defaultdict(list)
    with torch.no_grad():
        for pl in ["qgsa", "random"]:
            for i in range(0, len(samples), 25):
                ch = samples[i:i+25]
                prep = P.lm_inputs(pl, [s.image for s in ch], [s.question for s in ch], 224, k)
                for s, ids in zip(ch, a.generate(prep.inputs, 3)):
                    sc = exact_match(a.decode_text(ids), s.answers)
                    hits[(pl, "all")].append(sc); hits[(pl, s.question_type)].append(sc)
    print(name, {f"{p}/{t}": round(100*sum(v)/len(v),1) for (p,t), v in sorted(hits.items())}, flush=True)
a.connect = orig
