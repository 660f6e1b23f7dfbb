"""`qgsa train`: Algorithm 1 of the seed paper on a frozen base model.

Trainable: the scorer, f_comp, W_vis and W_p. The base VLM never receives gradient and is never
changed. One step (per batch of B questions):
  V = vision(image) (frozen), q = mean-pooled LM embeddings (frozen), c = sigma(f_comp(q)), k_b
  Gumbel + straight-through selection at temperature tau (annealed linearly tau_start -> tau_end)
  L_cs    from log P(answer) with the selected patches vs k_b random ones, through the frozen LM
  L_align between W_p v_i of the selected patches and phi(noun) of the question's nouns
  L_sparse, L_entropy, L_kvar, L_qlen as in Algorithm 1
AdamW, linear warm-up then cosine decay, gradient-norm clipping. Checkpoints (QGSA tensors, config,
optimiser, scheduler, step, RNG states) are written atomically every `save_every` steps and at the
end; `resume` continues from the last one with the same next-step losses. With --insert tiles the scorer
chooses T tiles of the model's own split views before the encoder (qgsa-tiles; L_cs against T random tiles,
L_align on the chosen tiles' features, the chosen tiles' visual tokens weighted by the straight-through mask). Under a launch of several processes
the steps are data-parallel (experiments/ddp.py: --batch per process, global batch W x --batch); the main
process alone writes the log and the checkpoints, and a checkpoint resumes under any number of processes
that gives the same global batch.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import TrainConfig
from qgsa_bench.data import load_dataset
from qgsa_bench.experiments.driver import Results
from qgsa_bench.qgsa import losses
from qgsa_bench.qgsa.checkpoint import load_checkpoint, save_checkpoint
from qgsa_bench.qgsa.config import QGSAConfig
from qgsa_bench.results import run_meta
from qgsa_bench.models.views import Views
from qgsa_bench.run.inputs import describe_input, own_views_split
from qgsa_bench.run.post_vision import Visual
from qgsa_bench.run.tiles import encode_views
from qgsa_bench.run.vision import Encoded, vision_from, vision_until
from qgsa_bench.selectors.selection import gather_patches

CHECKPOINT = "checkpoint.pt"
LOG_COLUMNS = ["step", "epoch", "loss", "l_cs", "l_align", "l_answer", "l_attr", "l_budget", "l_sparse", "l_entropy",
               "l_kvar", "l_qlen", "k_mean", "k_std", "c_mean", "tau", "lr", "step_s"]


def main_answer(answers: list[str]) -> str:
    """The most frequent reference answer (first seen wins a tie)."""
    return Counter(answers).most_common(1)[0][0] if answers else ""


def tau_at(step: int, total: int, start: float, end: float) -> float:
    return start if total <= 1 else start + (end - start) * step / (total - 1)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class StepInputs:
    V: torch.Tensor | None  # (B, N, d_v) frozen patch features (None at --insert tiles: `views`)
    q: torch.Tensor  # (B, d_q)
    lengths: torch.Tensor  # (B,) question lengths in tokens
    questions: list[str]
    answers: list[str]
    ids: list[str]
    views: Views | None = None  # --insert tiles: the images as the model's processor splits them


class Trainer:
    def __init__(self, cfg: TrainConfig, built, data, encoder=None, nouns=None, parallel=None):
        self.cfg, self.built, self.data, self.samples = cfg, built, data, data.samples
        self.parallel = parallel  # ddp.DataParallel under a launch or mixed precision, else None
        self.global_batch = cfg.batch * (parallel.world.size if parallel else 1)
        self.adapter, self.module = built.adapter, built.module
        self.encoder, self.nouns = encoder, nouns
        # the runs trained and compared (L_cs): after the encoder (the paper), inside it (qgsa-vision@vision:L),
        # or before it choosing tiles (qgsa-tiles against random-tiles, on the model's own views)
        self.tiles = built.adapter.splitting(True, cfg.longest_edge) if cfg.insert == "tiles" else None
        self.inside = cfg.insert not in ("post-vision", "tiles")
        names = (("qgsa-tiles", "random-tiles") if self.tiles else (f"qgsa-vision@{cfg.insert}", f"random@{cfg.insert}")
                 if self.inside else ("qgsa", "random"))
        self.run, self.random_run = built.run(names[0]), built.run(names[1])
        if self.tiles is not None:
            self._check_tiles()
        self.resolution = self.run.resolution(cfg.resolution or self.adapter.image_size)
        self.generator = built.engine.generator  # Gumbel noise and random subsets, saved in checkpoints
        self._features: dict[str, torch.Tensor] = {}
        self._attribution: dict[str, torch.Tensor] = {}
        self._sufficient: dict[str, torch.Tensor] = {}
        self.steps_per_epoch = math.ceil(len(self.samples) / self.global_batch)
        if parallel:  # every global batch must give every process a question
            parallel.shard(self.batch_at(self.steps_per_epoch - 1))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg.warmup_steps))
        self.step = 0

    def image_input(self) -> str:
        """What the training fed the model (run/inputs.describe_input): the processor's views (--insert tiles) or
        one square view."""
        return describe_input(self.tiles, self.resolution)

    def _check_tiles(self) -> None:
        """--insert tiles: the first training image's tiles hold the fixed budget T. Raises QGSAError before any
        step or file (an image of one view has no tile to choose)."""
        batch, images = self.data.open_images(self.samples[:1])
        if not batch:
            return
        n_tiles = self.adapter.views(images, self.tiles).counts[0] - 1
        edge = self.tiles.longest_edge
        if n_tiles == 0:
            raise QGSAError(f"at longest edge {edge} px a training image is one view (no tile to choose): give a larger "
                            f"--longest-edge (a multiple of {self.tiles.tile} px)")
        if self.cfg.fixed_k > n_tiles:
            raise QGSAError(f"--fixed-k {self.cfg.fixed_k} is above the {n_tiles} tiles of a training image at longest "
                            f"edge {edge} px: use --fixed-k 1 .. {n_tiles}")

    # ---- data ----------------------------------------------------------------------------
    def batch_at(self, step: int) -> list:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.samples), generator=torch.Generator().manual_seed(self.cfg.seed * 1009 + epoch))
        size = self.global_batch
        return [self.samples[i] for i in order[index * size:(index + 1) * size].tolist()]

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen part of the encoder: V (B, N, d_v) after it, or with --insert vision:L the hidden
        states after layer L (B, P + N, d_v) that the selection acts on."""
        if not self.inside:
            return self.adapter.patch_features(pixel_values)
        return vision_until(self.adapter, pixel_values, self.run.spec.point.layers[0])[1]

    @torch.no_grad()
    def inputs(self, batch) -> StepInputs:
        a = self.adapter
        if self.tiles is not None:  # each step encodes the global views and the chosen tiles (run/tiles.py)
            batch, images = self.data.open_images(batch)
            V, views = None, a.views(images, self.tiles) if batch else None
        elif self.cfg.cache_features:  # the base is frozen, so features never change: compute once
            missing, images = self.data.open_images([s for s in batch if s.id not in self._features])
            if missing:
                V = self.features(a.pixel_values(images, self.resolution))
                self._features.update({s.id: v for s, v in zip(missing, V)})
            batch = [s for s in batch if s.id in self._features]  # unreadable ones dropped (--skip-bad)
            V = torch.stack([self._features[s.id] for s in batch]) if batch else None
        else:
            batch, images = self.data.open_images(batch)
            V = self.features(a.pixel_values(images, self.resolution)) if batch else None
        if not batch:
            raise QGSAError(f"{self.data.name}: every image of a training batch was unreadable "
                            f"({self.data.skipped} skipped so far): check the data set's images")
        questions = [s.question for s in batch]
        lengths = torch.tensor(a.question_lengths(questions), device=a.device)
        return StepInputs(V, a.question_embedding(questions), lengths, questions,
                          [main_answer(s.answers) for s in batch], [s.id for s in batch],
                          views if self.tiles is not None else None)

    @staticmethod
    def _per_question(cache: dict, x: StepInputs, compute) -> torch.Tensor:
        """A frozen-base quantity per question, cached by question id: `compute(idx)` runs once, on the
        batch positions whose ids are not cached yet, and returns one row per position."""
        missing = [i for i, key in enumerate(x.ids) if key not in cache]
        if missing:
            cache.update(zip([x.ids[i] for i in missing], compute(missing).detach()))
        return torch.stack([cache[key] for key in x.ids])

    def attribution(self, x: StepInputs) -> torch.Tensor:
        """p* per sample (losses.attribution_targets), cached by question id: the base is frozen."""
        return self._per_question(self._attribution, x, lambda idx: losses.attribution_targets(
            self.adapter, x.V[idx], [x.questions[i] for i in idx], [x.answers[i] for i in idx]))

    def sufficient(self, x: StepInputs, targets: torch.Tensor) -> torch.Tensor:
        """k* per sample (losses.sufficient_budget), cached by question id: the base is frozen."""
        qc = self.module.config
        return self._per_question(self._sufficient, x, lambda idx: losses.sufficient_budget(
            self.adapter, self.adapter.unit_patches(x.V.shape[1], x.V.device), x.V[idx],
            [x.questions[i] for i in idx], [x.answers[i] for i in idx], targets[idx],
            losses.budget_grid(qc.k_min, min(qc.k_max, x.V.shape[1])), self.cfg.suff_budget))

    # ---- one step ------------------------------------------------------------------------
    def select(self, x: StepInputs, tau: float):
        """(visual tokens, random-baseline function k -> its visual tokens, features of the scored items,
        their count), through the run's own select stage (and, inside the encoder, its remaining layers)."""
        cfg = self.cfg
        if self.tiles is not None:  # tiles chosen by Gumbel straight-through, their tokens weighted by the mask
            enc = encode_views(self.run, x.views, x.q, cfg.fixed_k, tau)
            visual = self.run.select(enc, x.q)

            def random_tiles(k):
                return self.random_run.select(encode_views(self.random_run, x.views, x.q, k), x.q)

            return visual, random_tiles, enc.unit_features, enc.n_units
        if not self.inside:
            enc = Encoded(V=x.V)
            visual = self.run.select(enc, x.q, k=cfg.fixed_k, tau=tau, budget_grad=not cfg.budget_target)
            return visual, lambda k: self.random_run.select(enc, x.q, k=k), x.V, x.V.shape[1]
        enc = vision_from(self.run, x.V, None, x.q, k=cfg.fixed_k, tau=tau)
        visual = self.run.select(enc, x.q)

        def random_tokens(k):
            return self.random_run.select(vision_from(self.random_run, x.V, None, x.q, k=k), x.q)

        return visual, random_tokens, enc.unit_features, enc.n_units

    def answer_logprob(self, visual: Visual, x: StepInputs) -> torch.Tensor:
        """log P(answer | the prompt around `visual`) (B,), through the run's LM inputs."""
        inputs, plan = self.run.lm_inputs(visual, x.questions, x.q)
        return self.run.answer_logprob(inputs, plan, x.answers)

    def losses(self, x: StepInputs, tau: float) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        visual, random_tokens, items, n_items = self.select(x, tau)
        tokens, sel = visual.tokens, visual.selection
        zero = tokens.sum() * 0.0
        terms = {"l_cs": zero, "l_align": zero, "l_answer": zero}
        if not cfg.no_cs or cfg.lambda_answer:
            logp_sparse = self.answer_logprob(visual, x)
            terms["l_answer"] = -logp_sparse.mean()
        if not cfg.no_cs:
            logp_random = self.answer_logprob(random_tokens(sel.k), x)
            terms["l_cs"] = losses.contrastive_selection(logp_sparse, logp_random)
        if not cfg.no_align:
            proj = self.module.W_p(gather_patches(items.to(tokens.dtype), sel, weighted=False))
            nouns = [self.encoder(self.nouns(q)).to(proj.device) for q in x.questions]
            terms["l_align"] = losses.alignment(proj, sel.weights, nouns)
        terms["l_attr"] = terms["l_budget"] = zero
        targets = self.attribution(x) if cfg.lambda_attr or cfg.budget_target else None
        if cfg.lambda_attr:
            terms["l_attr"] = losses.attribution(sel.scores, targets)
        if cfg.budget_target and sel.c is not None:
            qc = self.module.config
            k_star = (self.sufficient(x, targets) if cfg.suff_budget
                      else losses.attribution_budget(targets, cfg.attr_budget, qc.k_min, qc.k_max))
            terms["l_budget"] = losses.budget_regression(self.module.k_continuous(sel.c), k_star, qc.k_min, qc.k_max)
        terms["l_sparse"] = losses.sparsity(sel.mask_sum, n_items)
        terms["l_entropy"] = losses.entropy(sel.scores, tau, cfg.entropy_coef)
        if sel.c is not None:
            terms["l_kvar"] = losses.budget_variance(sel.c, cfg.kvar_coef)
            terms["l_qlen"] = losses.length_correlation(x.lengths, sel.c, cfg.qlen_coef)
        else:
            terms["l_kvar"] = terms["l_qlen"] = zero
        terms["loss"] = (cfg.lambda_cs * terms["l_cs"] + cfg.lambda_align * terms["l_align"]
                         + cfg.lambda_answer * terms["l_answer"] + cfg.lambda_attr * terms["l_attr"] + terms["l_budget"]
                         + cfg.lambda_sparse * terms["l_sparse"] + terms["l_entropy"] + terms["l_kvar"]
                         + terms["l_qlen"])
        terms["_k"], terms["_c"] = sel.k.float(), sel.c
        return terms

    def train_step(self) -> dict:
        start = time.perf_counter()
        tau = tau_at(self.step, self.total_steps, self.cfg.tau_start, self.cfg.tau_end)
        self.module.train()
        batch, par = self.batch_at(self.step), self.parallel
        own = par.shard(batch) if par else batch
        draws = par.draws([self.run, self.random_run], self.generator, len(batch)) if par else nullcontext()
        with draws, (par.autocast() if par else nullcontext()):
            terms = self.losses(self.inputs(own), tau)
        values = {k: float(v.detach()) for k, v in terms.items() if not k.startswith("_")}
        if par:
            values = par.mean_values(values, len(own), len(batch))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise QGSAError(f"non-finite loss at step {self.step + 1} ({', '.join(f'{k}={values[k]}' for k in bad)}): "
                            f"training stopped; the last good checkpoint is kept in {self.cfg.out}/{CHECKPOINT}")
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if par:
            par.sync_gradients(self.module.parameters(), len(own), len(batch))
        if self.cfg.budget_target:
            # With a budget target f_comp is clipped apart from the rest: under one global norm the scorer's
            # large gradients scale f_comp's small ones (q is a mean of LM embeddings) towards Adam's epsilon.
            budget = list(self.module.f_comp.parameters())
            rest = [p for p in self.module.parameters() if all(p is not b for b in budget)]
            torch.nn.utils.clip_grad_norm_(rest, self.cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(budget, self.cfg.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]  # this step's (the scheduler then sets the next one's)
        self.optimizer.step()
        self.scheduler.step()
        self.module.eval()
        k, c = terms["_k"], terms["_c"]
        if par:  # the global batch's
            k, c = par.gathered(k), par.gathered(c)
        self.step += 1
        return {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch + 1, **values,
                "k_mean": float(k.mean()), "k_std": float(k.std(unbiased=False)),
                "c_mean": float(c.detach().mean()) if c is not None else None, "tau": tau,
                "lr": lr, "step_s": time.perf_counter() - start}

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, path: Path) -> None:
        save_checkpoint(path, self.module, self.built.loaded.provenance(), {
            "train_config": self.cfg.to_dict(), "global_batch": self.global_batch, "step": self.step,
            "total_steps": self.total_steps,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
        })

    def identity(self) -> dict:
        """What a resumed run must share with this one (TrainConfig.run_identity), its batch the global batch:
        a run resumes under any number of processes that gives the same global batch."""
        return {**self.cfg.run_identity(), "batch": self.global_batch}

    @property
    def is_main(self) -> bool:
        """Whether this process writes the log and checkpoints (the main one of a launch)."""
        return self.parallel is None or self.parallel.world.is_main

    def resume_from(self, ckpt: Path) -> None:
        """Continue the run saved in `ckpt` (read by the main process, sent to the others); QGSAError where it
        was made with other settings."""
        from qgsa_bench.experiments.parallel import joined, shared_outcome

        payload = shared_outcome(joined(), lambda: load_checkpoint(ckpt, self.built.loaded.provenance())[1])
        if "optimizer" not in payload:
            raise QGSAError(f"{ckpt} holds the module's weights only (a shipped copy, no trainer state): it can be "
                            f"read with --checkpoint but not resumed; start a new --out")
        saved = {**TrainConfig(**payload["train_config"]).run_identity(),
                 "batch": payload.get("global_batch", payload["train_config"]["batch"])}
        differs = [k for k, v in self.identity().items() if saved.get(k) != v]
        if differs:
            raise QGSAError(f"--resume with other settings than {ckpt} was made with ({', '.join(differs)}): "
                            f"resume with the same settings, or start a new --out")
        self.restore(payload)

    def restore(self, payload: dict) -> None:
        self.module.load_state_dict(payload["qgsa_state"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.generator.set_state(payload["rng"]["generator"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.step = int(payload["step"])


def _budget_by_type(trainer: Trainer) -> dict:
    """The trained f_comp's k (inference) per question type over the training questions; none with --fixed-k
    (every selection took the fixed budget, so f_comp was never trained and its k would mean nothing)."""
    if trainer.cfg.fixed_k is not None:
        return {}
    by_type: dict[str, list[int]] = {}
    with torch.no_grad():
        for start in range(0, len(trainer.samples), 64):
            chunk = trainer.samples[start:start + 64]
            k, _, _ = trainer.module.budget(trainer.adapter.question_embedding([s.question for s in chunk]))
            for s, kb in zip(chunk, k.tolist()):
                by_type.setdefault(s.question_type or "all", []).append(kb)
    return {t: {"n": len(v), "k_mean": float(np.mean(v)), "k_std": float(np.std(v)),
                "histogram": dict(sorted(Counter(v).items()))} for t, v in sorted(by_type.items())}


def run_train(cfg: TrainConfig, resume: bool = False, progress=None, warn=None) -> dict:
    """Train the QGSA module of `cfg` into `cfg.out` (module docstring); the summary (steps, final losses, k per
    question type, checkpoint path). Data-parallel under a launch of several processes (ddp.py); only the main
    process writes. Raises QGSAError for bad input before any step (settings other than the folder's, a missing
    checkpoint with `resume`, a global batch leaving a process without questions, --skip-bad under a launch),
    parallel.WorldLost when another process stopped."""
    from qgsa_bench.experiments.parallel import join_world, shared_outcome

    world = join_world(cfg.device)
    if world.size > 1 and cfg.skip_bad:
        raise QGSAError("--skip-bad under a launch of several processes would let a dropped image shift the rows of "
                        "the other processes' random draws: repair or remove the images, or train in one process")
    identity = {**cfg.run_identity(), "batch": cfg.batch * world.size}
    with Results(cfg.out, "train", identity, cfg.overwrite) as res:
        ckpt = res.path(CHECKPOINT)
        if resume and not res.exists(CHECKPOINT):
            raise QGSAError(f"nothing to resume: {ckpt} does not exist")
        resume = res.exists(CHECKPOINT)  # the same command again continues the run its folder holds
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, cfg.skip_bad, cfg.seed)
        trainer = _trainer(cfg, data, warn, world)
        if resume:
            trainer.resume_from(ckpt)
            if trainer.step >= trainer.total_steps:
                res.finished(f"this training ({trainer.step} of {trainer.total_steps} steps)")
        if warn and 0 < trainer.total_steps <= cfg.warmup_steps:
            warn(warmup_warning(cfg, trainer.total_steps))
        res.write_text("config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        built = trainer.built
        meta = res.write_meta(run_meta(
            built, **data.meta(), train_config=cfg.to_dict(), global_batch=trainer.global_batch,
            world=world.meta(), image_input=trainer.image_input(),
            align_encoder=None if trainer.encoder is None else trainer.encoder.name,
            spacy_model=None if trainer.nouns is None else trainer.nouns.model,
            note="RANDOM base weights: a smoke test, not a trained selector" if built.loaded.weights == "random"
            else ""))
        if progress:
            progress(f"training {cfg.model} on {data.name}", -(trainer.total_steps - trainer.step))
        started = time.perf_counter()
        last = _train_loop(trainer, res.path("train_log.csv"), ckpt, progress)
        res.claim(*[name for name in ("train_log.csv", CHECKPOINT) if res.exists(name)])
        summary = {
            "steps": trainer.step, "total_steps": trainer.total_steps, "wall_s": time.perf_counter() - started,
            "weights": built.loaded.weights, "final": last, "k_by_question_type": _budget_by_type(trainer),
            "checkpoint": str(ckpt), "skipped_bad": data.skipped,
        }
        res.write_meta({**meta, **data.meta()})  # again: images skipped under --skip-bad are known only now
        if last is not None:
            summary["step_s_median"] = shared_outcome(world, lambda: median_step_s(res.path("train_log.csv")))
        res.write_text("summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def median_step_s(log: Path) -> float:
    """The median `step_s` (seconds) of a training log (train_log.csv)."""
    frame = np.genfromtxt(log, delimiter=",", names=True)
    return float(np.median(np.atleast_1d(frame["step_s"])))


def warmup_warning(cfg: TrainConfig, total_steps: int) -> str:
    """What a warm-up as long as the run means: the learning rate only rises, to this share of --lr."""
    why = f"--max-steps {cfg.max_steps}" if cfg.max_steps == total_steps else f"--epochs {cfg.epochs}"
    peak = lr_factor(total_steps - 1, total_steps, cfg.warmup_steps)
    return (f"--warmup-steps {cfg.warmup_steps} is not shorter than the run's {total_steps} steps ({why}): the "
            f"learning rate never leaves warm-up (it rises to {peak:.0%} of --lr {cfg.lr:g} and never decays); "
            f"lower --warmup-steps")


def _trainer(cfg: TrainConfig, data, warn=None, world=None) -> Trainer:
    """The base model with a fresh QGSA module of the training's config, the L_align encoders, the trainer;
    data-parallel (ddp.DataParallel) over `world` (parallel.World) of several processes or under mixed
    precision. Raises QGSAError for mixed precision off the GPU."""
    from qgsa_bench.experiments.ddp import DataParallel, check_mixed_precision

    check_mixed_precision(cfg.mixed_precision, cfg.device)
    qcfg = QGSAConfig(soft_mask_space=cfg.soft_mask_space, projection=cfg.projection, fill=cfg.fill,
                      tau=cfg.tau_start)
    built = build(cfg.model, cfg.weights, cfg.device, cfg.dtype, None, cfg.seed, warn=warn)
    if cfg.insert != "tiles" and cfg.resolution is None and own_views_split(built.adapter) and warn:
        warn(f"train --insert {cfg.insert} trains on one square view of {built.adapter.image_size} px (the seed "
             f"paper's form), not this model's own views (tiles + a global view): --insert tiles --fixed-k T trains "
             f"the tile scorer on those; --resolution R says one view without this warning")
    if cfg.align_encoder == "lm":
        qcfg.align_dim = built.adapter.d_q
    built = _with_module(built, qcfg, cfg.seed)
    encoder = nouns = None
    if not cfg.no_align:
        from qgsa_bench.qgsa.nouns import NounExtractor
        from qgsa_bench.qgsa.text_encoders import make_encoder

        encoder = make_encoder(cfg.align_encoder, built.adapter, cfg.clip_checkpoint)
        nouns = NounExtractor(cfg.spacy_model)
    parallel = None
    if (world is not None and world.size > 1) or cfg.mixed_precision != "no":
        from qgsa_bench.experiments.parallel import World

        parallel = DataParallel(world or World(), cfg.mixed_precision, cpu=built.device.type == "cpu")
    return Trainer(cfg, built, data, encoder, nouns, parallel)


def _train_loop(trainer: Trainer, log_path: Path, ckpt: Path, progress=None) -> dict | None:
    """Steps until the end, a log row each, a checkpoint every save_every steps and at the end: the last row."""
    cfg, last, columns, main = trainer.cfg, None, LOG_COLUMNS, trainer.is_main
    if main and log_path.exists() and log_path.stat().st_size:  # a resumed run keeps its log's columns
        with log_path.open(newline="") as existing:
            columns = next(csv.reader(existing))
    with log_path.open("a", newline="") if main else nullcontext() as handle:  # the main process writes
        writer = csv.DictWriter(handle, fieldnames=columns) if main else None
        if main and handle.tell() == 0:
            writer.writeheader()
        while trainer.step < trainer.total_steps:
            last = trainer.train_step()
            if main:
                writer.writerow({k: last.get(k) for k in columns})
                handle.flush()
            if main and (trainer.step % cfg.save_every == 0 or trainer.step == trainer.total_steps):
                trainer.save(ckpt)
            if progress:
                progress(f"step {trainer.step}/{trainer.total_steps} loss {last['loss']:.3f} cs {last['l_cs']:.3f} "
                         f"align {last['l_align']:.3f} k {last['k_mean']:.1f}±{last['k_std']:.1f} "
                         f"τ {last['tau']:.2f} lr {last['lr']:.1e}", 1)
    return last


def _with_module(built, qcfg: QGSAConfig, seed: int):
    """Replace the default module by one with the training's QGSA config (same seed)."""
    from qgsa_bench.build import new_module
    from qgsa_bench.run.stages import Engine

    module = new_module(built.adapter, qcfg, seed).to(built.device, built.dtype).eval()
    built.module, built.engine = module, Engine(built.adapter, module, seed)
    built.qgsa_weights = "training"
    return built
