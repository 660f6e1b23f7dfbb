"""`qgsa ablate`: latency (and, with trained checkpoints, accuracy) of the paper's Table 5 configurations.

dense -> fixed-k -> adaptive-k -> +L_cs -> +L_align -> full. The losses only change trained
weights, so without checkpoints the last four are the same randomly initialised module, labelled
`random-init`: their rows differ by noise (and by k for adaptive budgets), which is itself the
point the paper's Fig. 5 makes. Give `--checkpoint NAME=PATH` (NAME one of the configs) to
measure trained modules, or `--train-dataset` to have each configuration trained first
(`qgsa train` with the switches in TRAIN_FLAGS, into OUT/train/NAME) and then measured.
"""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import AblateConfig
from qgsa_bench.experiments.parallel import per_process_folder, timing_alone
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.measure import Case
from qgsa_bench.experiments.runner import (STAT_COLUMNS, THROUGHPUT_COLUMNS, Progress, measure_cases, measure_meta,
                                           steps_per_resolution, timing_deadline, warn_unstable)
from qgsa_bench.experiments.sweep import PAPER_K, check_k_fits
from qgsa_bench.models.images import command_image
from qgsa_bench.qgsa.checkpoint import load_checkpoint
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import describe_input
from qgsa_bench.runtime import device_name, dtype_name, resolve_device

# name users type -> (label in tables, pipeline, fixed k?)
ABLATION_CONFIGS = {
    "dense": ("Baseline (dense)", "dense", False),
    "fixed-k": ("+ sparse selection (fixed k)", "qgsa", True),
    "adaptive-k": ("+ adaptive k", "qgsa", False),
    "cs": ("+ L_cs", "qgsa", False),
    "align": ("+ L_align", "qgsa", False),
    "full": ("+ both losses (full)", "qgsa", False),
}
ABLATE_CSV = "ablate.csv"
ABLATE_COLUMNS = [
    "model", "weights", "device", "dtype", "batch", "resolution", "config", "label", "pipeline",
    "qgsa_weights", "n_patches", "n_visual_tokens", "k", "decode_tokens", "latency_ms_median",
    "latency_ms_p10", "latency_ms_p90", "n", "vision_ms", "select_ms", "connector_ms", "prefill_ms",
    "decode_ms_per_token", "flops_total", "peak_mem_mb", "accuracy", "accuracy_n", *STAT_COLUMNS,
    *THROUGHPUT_COLUMNS,
]
ABLATE_TABLE = Table(ABLATE_CSV, tuple(ABLATE_COLUMNS), ("config",))
# how `qgsa ablate --train-dataset` trains each configuration (qgsa train options)
TRAIN_FLAGS = {
    "fixed-k": {"no_cs": True, "no_align": True},  # selection with the regularisers only, fixed k
    "adaptive-k": {"no_cs": True, "no_align": True},
    "cs": {"no_align": True},
    "align": {"no_cs": True},
    "full": {},
}


def parse_checkpoints(specs: list[str]) -> dict[str, str]:
    """['full=runs/full.pt', ...] -> {'full': 'runs/full.pt'}; names must be ablation configs."""
    parsed = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in ABLATION_CONFIGS or name == "dense":
            raise QGSAError(f"--checkpoint takes NAME=PATH with NAME one of "
                            f"{', '.join(n for n in ABLATION_CONFIGS if n != 'dense')}; got '{spec}'")
        parsed[name] = path
    return parsed


def run_ablate(cfg: AblateConfig, progress: Progress | None = None, warn=None) -> Path:
    m = cfg.measure
    checkpoints = cfg.checkpoints or {}
    settings = {**m.settings(), **cfg.settings(), "device": device_name(resolve_device(m.device)),
                "checkpoints": checkpoints}
    rank = timing_alone("ablate", m.per_process)  # never timed by processes that share a host
    out = cfg.out if rank is None else per_process_folder(cfg.out, rank)
    image = command_image(m.image)  # before the model loads
    with Results(out, "ablate", settings, cfg.overwrite, rank=rank) as res:
        built = build(m.model, m.weights, m.device, m.dtype, None, m.seed,
                      attn_implementation=m.attn_implementation, warn=warn)
        fixed_k = m.k or PAPER_K
        check_k_fits(built.run("qgsa"), cfg.resolution, fixed_k)
        if cfg.train_dataset:
            checkpoints = {**train_configurations(cfg, fixed_k, progress, warn), **checkpoints}
        cases, qgsa_weights = _cases(built, checkpoints, fixed_k)
        done = {c for c, in res.done(ABLATE_TABLE)}
        cases = [c for c in cases if c.label not in done]
        if not cases:
            res.finished("every ablation configuration")
        meta = res.write_meta(run_meta(built, **{
            **measure_meta(built, m), "k_rule": f"fixed-k uses k={fixed_k}; the others use f_comp(q)",
            # the seed paper's Table 5: its patch-level QGSA variants, trained and timed on one view
            "image_input": describe_input(None, cfg.resolution),
            "note": ("RANDOM base weights: latency is the architecture's; any accuracy is meaningless"
                     if built.loaded.weights == "random" else "accuracy only for configurations with checkpoints"),
            "qgsa_weights": "per configuration (see the qgsa_weights column)"}))
        if cases:
            if progress:
                progress("ablation configurations", -steps_per_resolution(len(cases), m.reps, m.warmup, m.count_flops))
            rows, _ = measure_cases(cases, [image] * m.batch, [m.question] * m.batch, cfg.resolution, m.reps,
                                    m.warmup, m.decode_tokens, m.count_flops, progress, timing_deadline(m, 1, 0))
            base = {"model": m.model, "weights": built.loaded.weights, "device": meta["device"],
                    "dtype": dtype_name(built.dtype), "batch": m.batch, "decode_tokens": m.decode_tokens}
            accuracy = ablation_accuracy(cfg, cases) if cfg.eval_limit and checkpoints else {}
            for row in rows:
                name = row["case"]
                row.update(config=name, label=ABLATION_CONFIGS[name][0], qgsa_weights=qgsa_weights[name],
                           **accuracy.get(name, {}))
            res.append(ABLATE_TABLE, [{**base, **row} for row in rows])
            unstable = [row["config"] for row in rows if row["unstable"]]
            res.write_meta({**meta, "unstable_cases": unstable, "reps_stopped": rows[0]["reps_stopped"]})
            warn_unstable(warn, unstable)
    return res.out


def _cases(built, checkpoints: dict, fixed_k: int) -> tuple[list[Case], dict]:
    """A case per configuration (its own engine where it has a checkpoint) and where its QGSA weights came from."""
    cases, qgsa_weights = [], {}
    for name, (label, pipeline, fixed) in ABLATION_CONFIGS.items():
        engine, origin = built.engine, built.qgsa_weights
        if name in checkpoints:
            module, _ = load_checkpoint(checkpoints[name], built.loaded.provenance())
            engine = built.engine.with_module(module.to(built.device, built.dtype).eval())
            origin = f"checkpoint:{checkpoints[name]}"
        cases.append(Case(name, engine.run(pipeline), fixed_k if fixed else None))
        qgsa_weights[name] = "not used" if pipeline == "dense" else origin
    return cases, qgsa_weights


def train_configurations(cfg: AblateConfig, fixed_k: int, progress=None, warn=None) -> dict[str, str]:
    """Train each QGSA configuration that has no checkpoint (or reuse OUT/train/NAME), return the paths."""
    from qgsa_bench.config import TrainConfig
    from qgsa_bench.experiments.train import CHECKPOINT, run_train

    m, paths = cfg.measure, {}
    for name, flags in TRAIN_FLAGS.items():
        if name in (cfg.checkpoints or {}):
            continue
        folder = Path(cfg.out) / "train" / name
        if not (folder / CHECKPOINT).exists() or not (folder / "summary.json").exists():
            run_train(TrainConfig(
                model=m.model, weights=m.weights, dataset=cfg.train_dataset, data_dir=cfg.train_data_dir,
                limit=cfg.train_limit, max_steps=cfg.train_steps, align_encoder=cfg.align_encoder,
                fixed_k=fixed_k if name == "fixed-k" else None, device=m.device, dtype=m.dtype, seed=m.seed,
                out=str(folder), **flags), resume=(folder / CHECKPOINT).exists(), progress=progress, warn=warn)
        paths[name] = str(folder / CHECKPOINT)
    return paths


def ablation_accuracy(cfg: AblateConfig, cases: list[Case]) -> dict[str, dict]:
    """Accuracy of each configuration on the eval split of the training data set (`qgsa eval` scoring)."""
    import numpy as np

    from qgsa_bench.config import EvalConfig
    from qgsa_bench.data import load_dataset
    from qgsa_bench.experiments.evaluate import evaluate_run

    data = load_dataset(cfg.train_dataset or "shapes", cfg.train_data_dir, None, cfg.eval_limit)
    ecfg = EvalConfig(batch=8, seed=cfg.measure.seed)
    out = {}
    for case in cases:
        ecfg.k = case.k
        records = evaluate_run(case.run, data, cfg.resolution, ecfg)
        scored = [r["score"] for r in records if r["score"] is not None]
        out[case.label] = {"accuracy": 100 * float(np.mean(scored)) if scored else None, "accuracy_n": len(scored)}
    return out
