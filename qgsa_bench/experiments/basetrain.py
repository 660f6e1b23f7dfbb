"""`qgsa base-train`: train every weight of a small Idefics3 on the shapes set, from scratch.

No pretrained VLM can be downloaded here, so this makes one that can answer. The architecture is
the `shapes-base` preset (models/presets/train/shapes-base.json: 224 px, patch 16, 196 patches,
pixel shuffle x2 -> 49 dense visual tokens, 4+4 layers of width 128); the tokenizer is word-level,
built with `tokenizers` from the data's vocabulary. Training is the dense pipeline of the adapter
(vision -> connector -> LM), teacher-forced on "{answer}<end_of_utterance>", on freshly generated
batches (every step new images, so no epoch and no over-fitting), AdamW with warm-up and cosine decay.
The result is saved with `save_pretrained` (model + tokenizer) so that `--model DIR` loads it through
the same `from_pretrained` path as SmolVLM.

A preset with image splitting on (`shapes-tiled`: 448-px images cut into 2 x 2 tiles of 224 px + a global
view, 5 views, 245 visual tokens) trains on the model's own views: transformers' Idefics3ImageProcessor,
every view encoded, the prompt with each tile's <row_r_col_c> marker (the run's views path: models/views.py,
run/tiles.py). It continues a one-view base (`--init`) with the encoder frozen (`--freeze-vision`), adds
the tile markers to its tokenizer (new embedding and head rows) and saves the image processor's settings
with the model, so that `--model DIR` splits images as it was trained to.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from qgsa_bench import QGSAError
from qgsa_bench.data import shapes
from qgsa_bench.experiments.train import lr_factor
from qgsa_bench.metrics import exact_match
from qgsa_bench.models.idefics3 import PROMPT_PREFIX, PROMPT_SUFFIX, Idefics3Adapter
from qgsa_bench.models.registry import LoadedModel
from qgsa_bench.models.tokenizer import WORD_LEVEL_KIND, build_word_tokenizer
from qgsa_bench.experiments.basetrain_views import add_tile_markers, preset_splitting, save_processor, visual_inputs
from qgsa_bench.models.views import Splitting
from qgsa_bench.runtime import resolve_device

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>", "<fake_token_around_image>",
                  "<image>", "<end_of_utterance>"]
END = "<end_of_utterance>"


@dataclass
class BaseTrainConfig:
    out: str = "runs/shapes-base"
    steps: int = 8000
    batch: int = 48  # questions per step
    questions_per_image: int = 6  # each encoded image is asked this many questions (batch / this = images)
    lr: float = 3.5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.05
    eval_every: int = 500
    eval_images: int = 100  # held-out test split: two questions per image
    max_minutes: float | None = None  # stop (and save) when this much wall time has passed
    init: str | None = None  # continue from a model folder saved by an earlier base-train
    curriculum_steps: int = 0  # the first N steps show one object per image (then 2-5)
    # Phase 1: steps that train only the vision encoder on the patch labels (batch / questions_per_image
    # images a step, vision_lr with warm-up and cosine decay); the encoder is then frozen while connector
    # + LM learn (phase 2).
    vision_steps: int = 3000
    vision_lr: float = 2e-3
    aux_weight: float = 1.0  # with --vision-steps 0 only: the patch-label loss added during joint training
    seed: int = 0
    device: str = "cpu"
    dataset: str = "shapes"  # a generated set (shapes.GENERATED): shapes | shapes-hires
    preset: str = "shapes-base"  # models/presets/train/*.json: shapes-base | shapes-tiled
    freeze_vision: bool = False  # keep --init's encoder as it is (no vision warm-up, no patch labels)

    def __post_init__(self):
        for name in ("steps", "batch", "questions_per_image", "eval_every", "eval_images"):
            if getattr(self, name) < 1:
                raise QGSAError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.vision_steps < 0 or self.aux_weight < 0:
            raise QGSAError("--vision-steps and --aux-weight must not be negative")
        if self.batch % self.questions_per_image:
            raise QGSAError(f"--batch {self.batch} must be a multiple of --questions-per-image {self.questions_per_image}")
        if self.dataset not in shapes.GENERATED:
            raise QGSAError(f"base-train needs unlimited labelled data: --dataset {' or '.join(shapes.GENERATED)}, "
                            f"got '{self.dataset}'")
        if self.freeze_vision and not self.init:
            raise QGSAError("--freeze-vision keeps the encoder of --init: pass --init DIR (a base-train model folder)")
        if preset_splitting(shapes_preset(self.preset)) and not self.freeze_vision:
            raise QGSAError(f"--preset {self.preset} splits images into tiles; its patch labels exist for one view "
                            f"only, so it trains connector + LM on a trained encoder: pass --init DIR --freeze-vision")


def shapes_preset(name: str = "shapes-base") -> dict:
    """A training preset (models/presets/train/NAME.json). Raises QGSAError for an unknown name."""
    folder = resources.files("qgsa_bench.models").joinpath("presets/train")
    path = folder.joinpath(f"{name}.json")
    if not path.is_file():
        names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))
        raise QGSAError(f"unknown --preset '{name}': use one of {', '.join(names)}")
    return json.loads(path.read_text())


def build_tokenizer():
    """Word-level vocabulary of the shapes questions and answers plus the prompt's own words."""
    texts = [PROMPT_PREFIX, PROMPT_SUFFIX.format(question="")]
    texts += [f"{s.question} {s.answers[0]}" for s in shapes.generate(400, seed=12345, split="train")]
    texts += [f"what color is the {sh}? what shape is the {c} object? is there a {c} {sh}? how many {sh}s are "
              f"there? is there an {c} {sh}? yes no" for c in shapes.COLORS for sh in shapes.SHAPES]
    return build_word_tokenizer(texts, SPECIAL_TOKENS)


def new_model(tokenizer, seed: int, device, preset_name: str = "shapes-base"):
    from transformers import AutoModelForImageTextToText, Idefics3Config

    preset = shapes_preset(preset_name)
    config = dict(preset["config"])
    vocab = tokenizer.get_vocab()
    config["image_token_id"] = vocab["<image>"]
    config["text_config"] = {**config["text_config"], "vocab_size": len(vocab), "bos_token_id": vocab["<|im_start|>"],
                             "eos_token_id": vocab[END], "pad_token_id": vocab["<|im_end|>"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(Idefics3Config(**config), attn_implementation="sdpa")
    return model.to(device), preset


def load_base(folder: str, device, preset_name: str = "shapes-base"):
    """A model folder written by base-train, to continue training it (all weights trainable)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    if not (Path(folder) / "config.json").is_file():
        raise QGSAError(f"--init {folder} is not a model folder written by qgsa base-train (no config.json)")
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa").to(device)
    model.requires_grad_(True)
    return model, AutoTokenizer.from_pretrained(folder), shapes_preset(preset_name)


def wrap(model, tokenizer, preset, source: str) -> LoadedModel:
    tile = model.config.vision_config.image_size
    return LoadedModel(name=preset["name"], source=source, weights="training", tokenizer_kind=WORD_LEVEL_KIND,
                       model=model, tokenizer=tokenizer, image_mean=tuple(preset["image_mean"]),
                       image_std=tuple(preset["image_std"]), special_tokens=tokenizer.get_vocab(),
                       splitting=preset_splitting(preset) or Splitting(False, 4 * tile, tile))


class PatchHeads(torch.nn.Module):
    """Training-only linear heads on the vision encoder's patch features: colour, shape, object centre.

    Discarded after base-train (the saved model is a plain Idefics3). They give the vision encoder a
    dense signal per patch, which the answer loss alone (one token per question, through the LM) does
    not: without them the base stayed at the answer priors (README)."""

    def __init__(self, d_v: int):
        super().__init__()
        self.sizes = (len(shapes.COLORS) + 1, len(shapes.SHAPES) + 1, 2)
        self.linear = torch.nn.Linear(d_v, sum(self.sizes))

    @staticmethod
    def labels(samples, adapter: Idefics3Adapter) -> torch.Tensor:
        """(B, 3, N) colour / shape / centre class of every patch (shapes.patch_labels), on the model's device."""
        return torch.stack([torch.from_numpy(shapes.patch_labels(s.extra["objects"], adapter.image_size,
                                                                 adapter.patch_size)).flatten(1)
                            for s in samples]).to(adapter.device)

    def loss(self, V: torch.Tensor, samples, adapter: Idefics3Adapter) -> torch.Tensor:
        labels = self.labels(samples, adapter)
        logits = self.linear(V).split(self.sizes, dim=-1)
        labels[:, 1][labels[:, 0] == 0] = -100  # shape only on object patches (background is the colour head's)
        return sum(torch.nn.functional.cross_entropy(part.flatten(0, 1), labels[:, i].flatten(), ignore_index=-100)
                   for i, part in enumerate(logits))


def dense_loss(adapter: Idefics3Adapter, samples, per_image: int, heads: PatchHeads | None = None,
               aux_weight: float = 0.0):
    """Answer cross-entropy (teacher-forced) of `samples`, `per_image` consecutive questions per image:
    each image is encoded once. Plus aux_weight x the patch-label loss when heads are given."""
    images = samples[::per_image]
    tokens, valid, layouts, V = visual_inputs(adapter, [s.image for s in images], per_image)
    inputs = adapter.build_inputs(tokens, [s.question for s in samples], valid, layouts)
    loss = -adapter.answer_logprob(inputs, [f"{s.answers[0]}{END}" for s in samples]).mean()
    if heads is not None and aux_weight > 0:
        loss = loss + aux_weight * heads.loss(V, images, adapter)
    return loss


@torch.no_grad()
def dense_accuracy(adapter: Idefics3Adapter, samples, batch: int = 50) -> dict[str, float]:
    """Exact-match accuracy (%) of greedy answers, overall and per question type."""
    hits: dict[str, list[float]] = {}
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        tokens, valid, layouts, _ = visual_inputs(adapter, [s.image for s in chunk])
        inputs = adapter.build_inputs(tokens, [s.question for s in chunk], valid, layouts)
        for s, ids in zip(chunk, adapter.generate(inputs, max_new_tokens=3)):
            score = exact_match(adapter.decode_text(ids), s.answers)
            hits.setdefault("all", []).append(score)
            hits.setdefault(s.question_type, []).append(score)
    return {k: 100 * sum(v) / len(v) for k, v in sorted(hits.items())}


@torch.no_grad()
def patch_accuracy(adapter: Idefics3Adapter, heads: PatchHeads, samples) -> dict[str, float]:
    """Held-out accuracy (%) of the patch heads on object patches: colour and shape."""
    V = adapter.patch_features(adapter.pixel_values([s.image for s in samples], adapter.image_size))
    labels = heads.labels(samples, adapter)
    logits = heads.linear(V).split(heads.sizes, dim=-1)
    on_object = labels[:, 0] > 0
    return {name: 100 * float((logits[i].argmax(-1) == labels[:, i])[on_object].float().mean())
            for i, name in enumerate(("patch_color", "patch_shape"))}


def _optimise(loss: torch.Tensor, optimizer, params, where: str, lr_option: str) -> float:
    """One AdamW step on `loss` (gradient norm clipped to 1); a non-finite loss stops with one line."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise QGSAError(f"non-finite loss at {where}: lower {lr_option}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return value


def vision_warmup(adapter: Idefics3Adapter, heads: PatchHeads, cfg: BaseTrainConfig, log_rows, started, progress):
    """Phase 1: only the vision encoder (+ the patch heads) learns the patch labels (warm-up, cosine decay).

    From scratch, the answer loss teaches the ViT to tell shapes apart far too slowly (the base stayed at
    the answer priors); the patch labels do it in a few minutes (README)."""
    params = [*adapter.vision_model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: lr_factor(s, cfg.vision_steps, cfg.warmup_steps))
    probe = shapes.generate(8, seed=cfg.seed + 7, split="val")
    if progress:
        progress("vision warm-up (patch labels)", -cfg.vision_steps)
    for step in range(1, cfg.vision_steps + 1):
        images = shapes.generate(cfg.batch // cfg.questions_per_image, seed=cfg.seed * 1_000_003 - step,
                                 split="train", questions=1)
        V = adapter.patch_features(adapter.pixel_values([s.image for s in images], adapter.image_size))
        lr = optimizer.param_groups[0]["lr"]
        loss_value = _optimise(heads.loss(V, images, adapter), optimizer, params, f"vision step {step}", "--vision-lr")
        scheduler.step()
        log_rows.append({"phase": "vision", "step": step, "loss": loss_value, "lr": lr,
                         "elapsed_s": time.perf_counter() - started})
        if progress:
            progress(f"vision step {step}/{cfg.vision_steps} patch loss {loss_value:.3f}", 1)
    return {"steps": cfg.vision_steps, "wall_s": time.perf_counter() - started, **patch_accuracy(adapter, heads, probe)}


def run_base_train(cfg: BaseTrainConfig, progress=None) -> dict:
    out = Path(cfg.out)
    if (out / "config.json").exists():
        raise QGSAError(f"{out} already holds a model: choose another --out or delete it")
    device = resolve_device(cfg.device)
    if cfg.init:
        model, tokenizer, preset = load_base(cfg.init, device, cfg.preset)
    else:
        tokenizer = build_tokenizer()
        model, preset = new_model(tokenizer, cfg.seed, device, cfg.preset)
    splitting = preset_splitting(preset)
    add_tile_markers(model, tokenizer, splitting)
    adapter = Idefics3Adapter(wrap(model, tokenizer, preset, str(out)))
    model.train()
    with torch.random.fork_rng(devices=[]):  # seeded like the model, so that a rerun repeats the run
        torch.manual_seed(cfg.seed + 1)
        heads = PatchHeads(model.config.vision_config.hidden_size).to(device)
    generate = shapes.GENERATED[cfg.dataset]
    held_out = generate(cfg.eval_images, seed=cfg.seed, split="test")
    out.mkdir(parents=True, exist_ok=True)
    log_rows, started, step, evals = [], time.perf_counter(), 0, []
    warm_up = cfg.vision_steps and not cfg.freeze_vision
    vision = vision_warmup(adapter, heads, cfg, log_rows, started, progress) if warm_up else {}
    if warm_up or cfg.freeze_vision:  # phase 2: the encoder stays as phase 1 (or --init) left it; connector + LM learn
        adapter.vision_model.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        heads = None
    else:
        params = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps))
    per_image = cfg.questions_per_image
    if progress:
        progress("training connector + LM" if heads is None else f"training {preset['name']}", -cfg.steps)
    while step < cfg.steps:
        one = {"objects": (1, 1)} if step < cfg.curriculum_steps else {}
        batch = generate(cfg.batch // per_image, seed=cfg.seed * 1_000_003 + step, split="train", questions=per_image,
                         **one)
        loss_value = _optimise(dense_loss(adapter, batch, per_image, heads, cfg.aux_weight), optimizer, params,
                               f"step {step + 1}", "--lr")
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - started
        log_rows.append({"phase": "full", "step": step, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                         "elapsed_s": elapsed})
        out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            model.eval()
            evals.append({"step": step, "elapsed_s": elapsed, **dense_accuracy(adapter, held_out)})
            model.train()
        if progress:
            progress(f"step {step}/{cfg.steps} loss {loss_value:.3f}"
                     + (f" held-out acc {evals[-1]['all']:.1f}%" if evals else ""), 1)
        if out_of_time:
            break
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_processor(out, splitting, preset)
    with (out / "base_train_log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(log_rows[0]))
        writer.writeheader()
        writer.writerows(log_rows)
    summary = {"config": asdict(cfg), "steps": step, "wall_s": time.perf_counter() - started,
               "parameters": sum(p.numel() for p in model.parameters()), "held_out": evals,
               "held_out_questions": len(held_out), "vocab_size": len(tokenizer.get_vocab()), "vision_warmup": vision,
               "views": splitting.describe() if splitting else "one view"}
    (out / "base_train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
