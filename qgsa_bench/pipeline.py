"""One pipeline for every selector: image + question -> LM inputs (and then prefill / decode).

    image -> vision encoder -> V (B, N, d_v);  question -> q = mean-pooled LM embeddings (B, d_q)
    dense        : connector(V)                      the model's own path (N / s^2 tokens)
    dense-bypass : W_vis(V)                          all N patches (the seed's accounting baseline)
    qgsa         : W_vis(V[top-k(score(q, V))])      k from f_comp(q) unless fixed
    random       : W_vis(V[k random patches])        image- and question-blind baseline
    norm         : W_vis(V[k largest-norm patches])  image-only baseline
Random and norm use the same k as QGSA would (f_comp(q)) unless k is given.
With the module's `projection = "connector"`, every sparse pipeline (qgsa, random, norm) reaches the
LM through the model's own connector instead of W_vis: connector(V * m) on the whole patch grid, m the
selection mask (unselected patches zeroed, or set to the module's learned fill vector), keeping the
connector tokens that hold a selected patch.

Every other name is a selector spec NAME[@POINT] (selectors/): the run in run.py places the selector at
its insertion point (vision:L, post-vision, lm:K, input) and the stages below call it (`encode`,
`visual_tokens`, `inputs`), so every command measures the paper's pipelines and the field's selectors
through the same three calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qgsa_bench import QGSAError
from qgsa_bench.models.base import LMInputs, VLMAdapter
from qgsa_bench.qgsa.module import QGSAModule
from qgsa_bench.qgsa.selector import (Selection, all_selection, gather_patches, norm_selection,
                                      random_selection)

PIPELINES = ("dense", "dense-bypass", "qgsa", "random", "norm")
SPARSE_PIPELINES = ("qgsa", "random", "norm")


def check_pipeline(name: str) -> str:
    """A pipeline name, or a selector spec NAME[@POINT] (selectors/__init__.py); raises QGSAError."""
    from qgsa_bench.selectors import SELECTOR_PIPELINES, is_selector_spec, parse_spec

    if is_selector_spec(name):
        parse_spec(name)
        return name
    if name not in PIPELINES:
        raise QGSAError(f"unknown pipeline '{name}': use one of {', '.join(PIPELINES + SELECTOR_PIPELINES)} "
                        "or SELECTOR@POINT (e.g. random@vision:4, fastv@lm:2)")
    return name


def selector_spec(name: str):
    """The selector spec of a pipeline name, or None for the paper pipelines (PIPELINES)."""
    from qgsa_bench.selectors import is_selector_spec, parse_spec

    return parse_spec(name) if is_selector_spec(name) else None


@dataclass
class PipelineInputs:
    pipeline: str
    resolution: int  # the resolution the vision encoder actually ran at
    n_patches: int  # N
    inputs: LMInputs  # what the LM prefill takes
    selection: Selection | None  # None for dense
    units: torch.Tensor | None = None  # (n, s^2) patches of each unit, for selector specs (selectors/)

    def kept(self, b: int) -> int | None:
        """Visual tokens the selector kept for sample b (after its last in-LM cut); None without selection."""
        from qgsa_bench.run import kept_visual

        if self.pipeline == "dense-bypass":
            return None
        k = kept_visual(self.inputs, self.selection)
        return None if k is None else int(k[b])

    def selected_patches(self, b: int) -> list[int] | None:
        """The patches (indices in [0, N)) behind sample b's kept visual tokens; None without selection."""
        if self.pipeline == "dense-bypass":
            return None
        plan = self.inputs.plan
        selection = plan.records[-1] if plan is not None and plan.records else self.selection
        if selection is None:
            return None
        picked = selection.indices[b][selection.valid[b]]
        if self.units is None:
            return picked.tolist()
        return sorted(self.units[picked].flatten().tolist())


class Pipeline:
    """The base model adapter plus a QGSA module; `lm_inputs` is the one place inputs are built."""

    def __init__(self, adapter: VLMAdapter, module: QGSAModule, seed: int = 0):
        self.adapter = adapter
        self.module = module
        gen_device = "cpu" if adapter.device.type == "meta" else adapter.device  # meta: `qgsa info` only
        self.generator = torch.Generator(device=gen_device).manual_seed(seed)
        from qgsa_bench.run import SelectorRun

        self.run = SelectorRun(adapter, module, self.generator)

    @contextmanager
    def same_draws(self):
        """Run something that draws from the random baseline's generator (a FLOP count, a warm-up) and
        restore it, so the measured run draws the same patches as one without it."""
        state = self.generator.get_state()
        try:
            yield
        finally:
            self.generator.set_state(state)

    def resolution_for(self, pipeline: str, resolution: int, k=None) -> int:
        check_pipeline(pipeline)
        self.adapter.n_patches(resolution)  # validates R for every pipeline
        spec = selector_spec(pipeline)
        if spec is not None:
            dense = self.adapter.dense_resolution(resolution)
            if spec.selector.name != "downsample":
                self.run.point(spec)  # validates the insertion point against the model's depth
                return dense
            if k is None or torch.as_tensor(k).numel() != 1:
                raise QGSAError("downsample needs one budget for the batch: give --k (visual tokens)")
            n = self.adapter.n_dense_tokens(dense)
            if not 1 <= int(torch.as_tensor(k)) <= n:
                raise QGSAError(f"budget {int(torch.as_tensor(k))} visual tokens is impossible for downsample: "
                                f"pick 1 <= budget <= {n} (the dense tokens at {dense} px)")
            return self.adapter.resolution_for_tokens(int(torch.as_tensor(k)))
        through_connector = pipeline in SPARSE_PIPELINES and self.module.config.projection == "connector"
        return self.adapter.dense_resolution(resolution) if pipeline == "dense" or through_connector else resolution

    def needs_early_question(self, pipeline: str) -> bool:
        """The question embedding is needed in the vision stage (a question-guided or budget-predicting
        selector inside the encoder)."""
        spec = selector_spec(pipeline)
        return spec is not None and self.run.point(spec).kind == "vision"

    def encode(self, pipeline: str, pixel_values: torch.Tensor, q: torch.Tensor | None = None, k=None):
        """The vision stage: V (B, N, d_v), or for a selector spec the run's `Encoded`."""
        spec = selector_spec(pipeline)
        if spec is None:
            return self.adapter.patch_features(pixel_values)
        return self.run.encode(spec, pixel_values, q, k)

    def inputs(self, pipeline: str, tokens: torch.Tensor, valid: torch.Tensor, questions: list[str],
               q: torch.Tensor | None = None, k=None) -> LMInputs:
        """The prompt around the visual tokens, with the in-LM selection plan where the spec has one."""
        inputs = self.adapter.build_inputs(tokens, questions, valid)
        spec = selector_spec(pipeline)
        if spec is not None:
            inputs.plan = self.run.lm_plan(spec, inputs.n_visual, q, k)
        return inputs

    def visual_tokens(self, pipeline: str, V, q: torch.Tensor, k=None, tau: float | None = None,
                      budget_grad: bool = True):
        """V (B, N, d_v), q (B, d_q) -> (tokens (B, n, d_q), valid (B, n), selection or None).

        In training mode the QGSA module selects with Gumbel noise at temperature `tau` (budget_grad:
        QGSAModule.select)."""
        spec = selector_spec(pipeline)
        if spec is not None:
            from qgsa_bench.run import Encoded

            enc = V if isinstance(V, Encoded) else Encoded(V=V)
            return self.run.visual_tokens(spec, enc, q, k)
        B, N, _ = V.shape
        if pipeline == "dense":
            tokens = self.adapter.connect(V)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=V.device), None
        if pipeline == "dense-bypass":
            selection = all_selection(B, N, V.device)
        elif pipeline == "qgsa":
            selection = self.module.select(q, V, k=k, tau=tau, generator=self.generator, budget_grad=budget_grad)
        else:
            if k is None:
                k = self.module.budget(q)[0]
            if pipeline == "random":
                selection = random_selection(B, N, k, V.device, generator=self.generator)
            else:
                selection = norm_selection(V, k)
        if self.module.config.projection == "connector":
            tokens, valid = self.connector_tokens(V, selection)
            return tokens, valid, selection
        return self.module.project(V, selection), selection.valid, selection

    def connector_groups(self, N: int, device) -> torch.Tensor:
        """(N/s^2, s^2): the patch indices that each connector token is built from."""
        return self.adapter.unit_patches(N, device)

    def connector_tokens(self, V: torch.Tensor, selection: Selection):
        """The model's own connector on the selected patches: (tokens (B, N/s^2, d_q), valid (B, N/s^2)).

        m (B, N) holds the straight-through weight (1.0 forward) of every selected patch and 0 elsewhere;
        the connector (pixel shuffle + a bias-free linear map in Idefics3) runs on V * m, so a token's
        share of each selected patch is exactly the dense one and unselected patches add nothing. A token
        is valid when at least one of its s^2 patches is selected. With a learned fill f (config.fill),
        the connector runs on V * m + (1 - m) * f instead: an unselected patch is f, not zero."""
        B, N, _ = V.shape
        if self.adapter.group_size == 1 and self.module.fill is None:  # one patch per token: project k patches
            return self.adapter.connect(gather_patches(V, selection)), selection.valid
        weights = selection.weights if selection.weights is not None else selection.valid.to(V.dtype)
        weights = torch.where(selection.valid, weights.to(V.dtype), torch.zeros_like(weights, dtype=V.dtype))
        m = torch.zeros(B, N, dtype=V.dtype, device=V.device).scatter_add(1, selection.indices, weights)
        patches = V * m[..., None]
        if self.module.fill is not None:
            patches = patches + (1 - m[..., None]) * self.module.fill.to(V.dtype)
        tokens = self.adapter.connect(patches)
        hard = torch.zeros(B, N, device=V.device).scatter_add(1, selection.indices, selection.valid.float()) > 0
        valid = hard[:, self.connector_groups(N, V.device)].any(dim=-1)  # (B, N/s^2)
        return tokens, valid

    def lm_inputs(self, pipeline: str, images, questions: list[str], resolution: int, k=None) -> PipelineInputs:
        if len(images) != len(questions):
            raise QGSAError(f"{len(images)} images but {len(questions)} questions")
        for question in questions:
            if not question or not question.strip():
                raise QGSAError("empty question: pass a non-empty --question")
        res = self.resolution_for(pipeline, resolution, k)
        if k is not None and pipeline in SPARSE_PIPELINES:
            n = self.adapter.n_patches(res)
            k_list = torch.as_tensor(k).reshape(-1).tolist()
            if min(k_list) < 1 or max(k_list) > n:
                raise QGSAError(f"k={max(k_list) if max(k_list) > n else min(k_list)} is impossible: "
                                f"pick 1 <= k <= N = {n} patches at resolution {res}")
        pixel_values = self.adapter.pixel_values(images, res)
        early = self.needs_early_question(pipeline)
        q = self.adapter.question_embedding(questions) if early else None
        V = self.encode(pipeline, pixel_values, q, k)  # (B, N, d_v), or the run's Encoded
        if not early:
            q = self.adapter.question_embedding(questions)  # (B, d_q)
        tokens, valid, selection = self.visual_tokens(pipeline, V, q, k)
        inputs = self.inputs(pipeline, tokens, valid, questions, q, k)
        N = self.adapter.n_patches(res)
        units = self.adapter.unit_patches(N) if selector_spec(pipeline) is not None else None
        return PipelineInputs(pipeline, res, N, inputs, selection, units)
