"""`qgsa grounding`: does the selection land on the referred object? (the paper's Table 3)

For every sample with a box: the convex hull of the selected patches, mapped back to the original
image's pixels, against the ground-truth box (IoU). Selectors at the same k per sample: qgsa,
random, norm, and the oracle (the best rectangular hull of k patches: the ceiling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import EvalConfig
from qgsa_bench.data import load_dataset
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.evaluate import batches
from qgsa_bench.metrics import hull_iou, oracle_patches
from qgsa_bench.results import run_meta

SELECTORS = ("qgsa", "random", "norm", "oracle")
PAIR_COLUMNS = ["model", "weights", "qgsa_weights", "dataset", "split", "selector", "n_pairs", "mean_jaccard",
                "share_in_own_box", "share_in_other_box", "resolution", "note"]
GROUNDING_COLUMNS = ["model", "weights", "qgsa_weights", "dataset", "split", "selector", "question_type", "n",
                     "mean_iou", "median_iou", "acc_iou_0_5", "k_mean", "resolution", "note"]
GROUNDED = "grounding.jsonl"  # one record per sample, appended as each batch finishes
GROUNDING_TABLE = Table("grounding.csv", tuple(GROUNDING_COLUMNS), ("selector", "question_type"))
PAIR_TABLE = Table("pairs.csv", tuple(PAIR_COLUMNS), ("selector",))


@torch.no_grad()
def select_all(built, images, questions, resolution: int, k, boxes, sizes, ids) -> dict[str, list[list[int]]]:
    """Selected patch indices per selector for a batch, through the run's own vision and select stages on one
    encoding of the batch; random and norm use QGSA's k per sample; random draws per sample (`ids`)."""
    a = built.adapter
    runs = {name: built.run(name) for name in SELECTORS[:3]}
    q = runs["qgsa"].question(questions)
    enc = runs["qgsa"].encode(a.pixel_values(images, resolution), q)  # V (B, N, d_v), shared
    qgsa = runs["qgsa"].select(enc, q, k).selection
    ks = qgsa.k
    with runs["random"].draws(runs["random"].sample_seeds(ids)):
        picks = {"qgsa": qgsa, "random": runs["random"].select(enc, q, ks).selection,
                 "norm": runs["norm"].select(enc, q, ks).selection}
    out = {name: [sel.indices[b][sel.valid[b]].tolist() for b in range(len(images))] for name, sel in picks.items()}
    grid = resolution // a.patch_size
    out["oracle"] = [oracle_patches(grid, w, h, box, int(kb)) for (w, h), box, kb in zip(sizes, boxes, ks)]
    return out


def box_samples(cfg: EvalConfig):
    """(the data set, its first `cfg.limit` samples with a box): the samples a grounding run reads, the same
    for `qgsa report` drawing them again. Raises QGSAError where none has a box."""
    # shapes: about half the questions have a box, so generate enough; file data sets: boxes on all
    limit = None if cfg.limit is None else (4 * cfg.limit if cfg.dataset == "shapes" else cfg.limit)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, limit, cfg.skip_bad, cfg.seed)
    samples = [s for s in data.samples if s.box is not None][: cfg.limit]
    if not samples:
        raise QGSAError(f"{cfg.dataset} split '{data.split}' has no samples with a box to ground")
    return data, samples


def run_grounding(cfg: EvalConfig, progress=None, warn=None) -> Path:
    with Results(cfg.out, "grounding", cfg.settings(), cfg.overwrite) as res:
        data, samples = box_samples(cfg)
        done = {r["id"]: r for r in res.read_records(GROUNDED)}  # an interrupted run's finished batches
        if all(s.id in done for s in samples) and res.path(GROUNDING_TABLE.file).exists():
            res.finished(f"the grounding of {len(samples)} boxes")
        built = build(cfg.model, cfg.weights, cfg.device, cfg.dtype, cfg.checkpoint, cfg.seed, warn=warn)
        requested = cfg.resolution or built.adapter.image_size
        resolution = built.run("qgsa").check(requested, cfg.k)  # every pipeline's (the dense path's) size
        grid = int(built.adapter.n_patches(resolution) ** 0.5)
        note = "RANDOM base weights: the selections mean nothing" if built.loaded.weights == "random" else ""
        meta = res.write_meta(run_meta(
            built, **{**data.meta(), "n_samples": len(samples)}, requested_resolution=requested,
            resolution=resolution, grid=grid, note=note,
            oracle="best IoU over selections of <= k patches whose hull is a grid-aligned rectangle"))
        if progress:
            progress(f"{data.name}: {len(samples)} boxes", -len(samples))
            if done:
                progress("resumed", sum(s.id in done for s in samples))
        records, samples = ground(built, data, samples, resolution, grid, cfg, progress, done,
                                  lambda new: res.append_records(GROUNDED, new))
        res.write_meta({**meta, **data.meta(), "n_samples": len(samples)})
        base = {"model": cfg.model, "weights": built.loaded.weights, "qgsa_weights": built.qgsa_weights,
                "dataset": data.name, "split": data.split, "resolution": resolution, "note": note}
        res.replace(GROUNDING_TABLE, summary_rows(records, base))
        pairs, _ = question_pairs(records, grid)
        if pairs:
            res.replace(PAIR_TABLE, [{**base, **row} for row in pairs])
    return res.out


def ground(built, data, samples, resolution: int, grid: int, cfg: EvalConfig, progress=None, done=None,
           save=None):
    """(one record per readable sample: every selector's patches and IoU, the samples behind them), in the
    samples' order. `done` (id -> record): finished by an interrupted run, kept; `save`: receives each batch's
    new records when the batch finishes."""
    done = done or {}
    new = {}
    for batch in batches([s for s in samples if s.id not in done], cfg.batch):
        chunk, images = data.open_images(batch)
        records = []
        sizes = [img.size for img in images]
        picks = select_all(built, images, [s.question for s in chunk], resolution, cfg.k,
                           [s.box for s in chunk], sizes, [s.id for s in chunk]) if chunk else {}
        for b, sample in enumerate(chunk):
            w, h = sizes[b]
            record = {"id": sample.id, "question": sample.question, "question_type": sample.question_type,
                      "box": list(sample.box), "width": w, "height": h, "k": len(picks["qgsa"][b]),
                      "image_index": sample.extra.get("image_index"), "referent": sample.extra.get("referent")}
            for name in SELECTORS:
                record[f"{name}_patches"] = picks[name][b]
                record[f"{name}_iou"] = hull_iou(picks[name][b], grid, w, h, sample.box)
            records.append(record)
        new.update((r["id"], r) for r in records)
        if save and records:
            save(records)
        if progress:
            progress(f"grounding {len(done) + len(new)}/{len(samples)}", len(batch))
    kept = [s for s in samples if s.id in done or s.id in new]
    if not kept:
        raise QGSAError(f"{data.name} split '{data.split}': no image could be read ({data.skipped} skipped)")
    return [done.get(s.id) or new[s.id] for s in kept], kept


def summary_rows(records: list[dict], base: dict) -> list[dict]:
    """IoU per selector, overall and per question type (percent)."""
    rows = []
    for qtype in ["all", *sorted({r["question_type"] for r in records} - {""})]:
        part = [r for r in records if qtype == "all" or r["question_type"] == qtype]
        for name in SELECTORS:
            ious = [r[f"{name}_iou"] for r in part]
            rows.append({**base, "selector": name, "question_type": qtype, "n": len(part),
                         "mean_iou": 100 * float(np.mean(ious)), "median_iou": 100 * float(np.median(ious)),
                         "acc_iou_0_5": 100 * float(np.mean([iou >= 0.5 for iou in ious])),
                         "k_mean": float(np.mean([r["k"] for r in part]))})
    return rows


def _centers_inside(indices, grid: int, width: float, height: float, box) -> float:
    """Share of the patches whose centre lies inside box [x, y, w, h] (original pixels)."""
    if not indices:
        return 0.0
    x, y, w, h = box
    inside = 0
    for i in indices:
        cx, cy = (i % grid + 0.5) * width / grid, (i // grid + 0.5) * height / grid
        inside += (x <= cx <= x + w) and (y <= cy <= y + h)
    return inside / len(indices)


def question_pairs(records: list[dict], grid: int) -> tuple[list[dict], list[tuple[int, int]]]:
    """Question-dependence: for two questions on one image about different objects, the Jaccard overlap
    of their selected sets and the share of each set inside its own object's box (vs the other's).
    For `random` the two sets are two independent draws: the chance level."""
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("image_index") is not None and r.get("referent") is not None:
            by_image.setdefault(r["image_index"], []).append(i)
    pairs = [(idx[0], idx[1]) for idx in by_image.values()
             if len(idx) >= 2 and records[idx[0]]["referent"] != records[idx[1]]["referent"]]
    rows = []
    for name in SELECTORS[:3]:
        jac, own, other = [], [], []
        for a, b in pairs:
            ra, rb = records[a], records[b]
            sa, sb = set(ra[f"{name}_patches"]), set(rb[f"{name}_patches"])
            jac.append(len(sa & sb) / max(len(sa | sb), 1))
            for r, s_own, r_other in ((ra, sa, rb), (rb, sb, ra)):
                own.append(_centers_inside(sorted(s_own), grid, r["width"], r["height"], r["box"]))
                other.append(_centers_inside(sorted(s_own), grid, r["width"], r["height"], r_other["box"]))
        if pairs:
            rows.append({"selector": name, "n_pairs": len(pairs), "mean_jaccard": float(np.mean(jac)),
                         "share_in_own_box": float(np.mean(own)), "share_in_other_box": float(np.mean(other))})
    return rows, pairs
