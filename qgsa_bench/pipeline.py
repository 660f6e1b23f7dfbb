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
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qgsa_bench import QGSAError
from qgsa_bench.models.idefics3 import Idefics3Adapter, LMInputs
from qgsa_bench.qgsa.module import QGSAModule
from qgsa_bench.qgsa.selector import Selection, all_selection, norm_selection, random_selection

PIPELINES = ("dense", "dense-bypass", "qgsa", "random", "norm")
SPARSE_PIPELINES = ("qgsa", "random", "norm")


def check_pipeline(name: str) -> str:
    if name not in PIPELINES:
        raise QGSAError(f"unknown pipeline '{name}': use one of {', '.join(PIPELINES)}")
    return name


@dataclass
class PipelineInputs:
    pipeline: str
    resolution: int  # the resolution the vision encoder actually ran at
    n_patches: int  # N
    inputs: LMInputs  # what the LM prefill takes
    selection: Selection | None  # None for dense


class Pipeline:
    """The base model adapter plus a QGSA module; `lm_inputs` is the one place inputs are built."""

    def __init__(self, adapter: Idefics3Adapter, module: QGSAModule, seed: int = 0):
        self.adapter = adapter
        self.module = module
        self.generator = torch.Generator(device=adapter.device).manual_seed(seed)

    @contextmanager
    def same_draws(self):
        """Run something that draws from the random baseline's generator (a FLOP count, a warm-up) and
        restore it, so the measured run draws the same patches as one without it."""
        state = self.generator.get_state()
        try:
            yield
        finally:
            self.generator.set_state(state)

    def resolution_for(self, pipeline: str, resolution: int) -> int:
        check_pipeline(pipeline)
        self.adapter.n_patches(resolution)  # validates R for every pipeline
        through_connector = pipeline in SPARSE_PIPELINES and self.module.config.projection == "connector"
        return self.adapter.dense_resolution(resolution) if pipeline == "dense" or through_connector else resolution

    def visual_tokens(self, pipeline: str, V: torch.Tensor, q: torch.Tensor, k=None, tau: float | None = None,
                      budget_grad: bool = True):
        """V (B, N, d_v), q (B, d_q) -> (tokens (B, n, d_q), valid (B, n), selection or None).

        In training mode the QGSA module selects with Gumbel noise at temperature `tau` (budget_grad:
        QGSAModule.select)."""
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
        """(N/s^2, s^2): the patch indices that each connector token is built from (its pixel shuffle)."""
        index = torch.arange(N, dtype=torch.float32, device=device)[None, :, None]
        return self.adapter.connector.pixel_shuffle(index, self.adapter.scale_factor)[0].round().long()

    def connector_tokens(self, V: torch.Tensor, selection: Selection):
        """The model's own connector on the selected patches: (tokens (B, N/s^2, d_q), valid (B, N/s^2)).

        m (B, N) holds the straight-through weight (1.0 forward) of every selected patch and 0 elsewhere;
        the connector (pixel shuffle + a bias-free linear map in Idefics3) runs on V * m, so a token's
        share of each selected patch is exactly the dense one and unselected patches add nothing. A token
        is valid when at least one of its s^2 patches is selected. With a learned fill f (config.fill),
        the connector runs on V * m + (1 - m) * f instead: an unselected patch is f, not zero."""
        B, N, _ = V.shape
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
        res = self.resolution_for(pipeline, resolution)
        if k is not None and pipeline in SPARSE_PIPELINES:
            n = self.adapter.n_patches(res)
            k_list = torch.as_tensor(k).reshape(-1).tolist()
            if min(k_list) < 1 or max(k_list) > n:
                raise QGSAError(f"k={max(k_list) if max(k_list) > n else min(k_list)} is impossible: "
                                f"pick 1 <= k <= N = {n} patches at resolution {res}")
        pixel_values = self.adapter.pixel_values(images, res)
        V = self.adapter.patch_features(pixel_values)  # (B, N, d_v)
        q = self.adapter.question_embedding(questions)  # (B, d_q)
        tokens, valid, selection = self.visual_tokens(pipeline, V, q, k)
        inputs = self.adapter.build_inputs(tokens, questions, valid)
        return PipelineInputs(pipeline, res, V.shape[1], inputs, selection)
