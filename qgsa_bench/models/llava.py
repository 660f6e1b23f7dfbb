"""The LLaVA-1.5 family (transformers' `LlavaForConditionalGeneration`): CLIP ViT-L/14 tower, MLP projector,
Vicuna (Llama) LM.

Visual tokens (the HF model's `get_image_features` with `vision_feature_select_strategy="default"`):
the CLIP tower's hidden states after layer `vision_feature_layer` (-2: the second to last of 24), CLS
token dropped, through the projector (Linear, GELU, Linear): 576 tokens at 336 px, one per patch, so
the connector's unit is one patch (s = 1) and k selected patches give k visual tokens. HF's tower also
runs the last layer and the post-layernorm, whose outputs LLaVA never uses; this run stops at the
feature layer (so its vision FLOPs are one layer fewer than a full ViT-L/14 count).

Prompt (the llava-hf/llava-1.5-7b-hf model card's chat format, one image):
    <s>USER: <image>x576\\n{question} ASSISTANT:
Preprocessing is the project's square resize (images.py) with CLIP's mean/std; LLaVA-1.5's own processor
pads the image to a square with the mean colour first, which changes pixels, never the FLOPs or time.
Other resolutions than 336 px (multiples of 14) interpolate CLIP's position embeddings, as HF's
`interpolate_pos_encoding` does.
"""

from __future__ import annotations

import torch

from qgsa_bench import QGSAError
from qgsa_bench.models.base import VLMAdapter

PROMPT_PREFIX = "USER: "
PROMPT_SUFFIX = "\n{question} ASSISTANT:"


class LlavaAdapter(VLMAdapter):
    family = "llava"
    prompt_prefix = PROMPT_PREFIX
    prompt_suffix = PROMPT_SUFFIX
    answer_prefix = " "
    n_prefix_vision = 1  # CLIP's CLS token (kept inside the tower, dropped from the visual tokens)
    scale_factor = 1
    # QGSA's selected patches go through LLaVA's own projector (one patch = one visual token; no pixel
    # shuffle), so k selected patches are k visual tokens the LM knows.
    default_projection = "connector"

    def __init__(self, loaded):
        model = loaded.model
        cfg = model.config
        super().__init__(loaded, model.model.language_model, model.lm_head)
        tower = model.model.vision_tower
        self.vision_model = tower.vision_model if hasattr(tower, "vision_model") else tower
        if not hasattr(self.vision_model, "pre_layrnorm") or not hasattr(self.vision_model, "embeddings"):
            raise QGSAError(f"'{loaded.name}' has a {type(tower).__name__} vision tower; the LLaVA family here "
                            "needs LLaVA-1.5's CLIP tower (clip_vision_model)")
        if cfg.vision_feature_select_strategy != "default" or not isinstance(cfg.vision_feature_layer, int):
            raise QGSAError(f"'{loaded.name}': only LLaVA-1.5's single feature layer with the CLS token dropped "
                            f"(vision_feature_select_strategy 'default') is supported, got "
                            f"{cfg.vision_feature_select_strategy!r} at layer {cfg.vision_feature_layer!r}")
        layers = list(self.vision_model.encoder.layers)
        f = cfg.vision_feature_layer
        run = f if f >= 0 else len(layers) + 1 + f  # hidden_states[f] is the output of `run` layers
        if not 0 <= run <= len(layers):
            raise QGSAError(f"'{loaded.name}': vision_feature_layer {f} is outside the tower's {len(layers)} layers")
        self.vision_layers = layers[:run]
        native = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        seq = getattr(cfg, "image_seq_length", native)
        if seq != native:
            raise QGSAError(f"'{loaded.name}': image_seq_length {seq} image tokens, but the tower gives {native} "
                            f"features at {cfg.vision_config.image_size} px (patch {cfg.vision_config.patch_size}): "
                            "fix image_seq_length in config.json or use a matching vision tower")
        self.feature_layer = f
        self.connector = model.model.multi_modal_projector
        self.d_v = cfg.vision_config.hidden_size
        self.d_q = cfg.text_config.hidden_size
        self.patch_size = cfg.vision_config.patch_size
        self.image_size = cfg.vision_config.image_size
        tokens = loaded.special_tokens
        self.end_ids = {tokens[t] for t in ("</s>",) if t in tokens}
        self.pad_id = tokens.get("<pad>", tokens.get("</s>", 0))
        self.bos_id = tokens.get("<s>")

    def start_ids(self) -> list[int]:
        """LLaVA's prompt starts with the tokenizer's BOS <s>."""
        return [] if self.bos_id is None else [self.bos_id]

    def vision_embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> CLS + patch embeddings with positions, pre-layernormed: (B, 1 + N, d_v)."""
        h = self.vision_model.embeddings(pixel_values, interpolate_pos_encoding=pixel_values.shape[-1] != self.image_size
                                         or pixel_values.shape[-2] != self.image_size)
        return self.vision_model.pre_layrnorm(h)

    def vision_out(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, self.n_prefix_vision:]  # the feature layer's output, CLS dropped (no post-layernorm)

    def connect(self, V: torch.Tensor) -> torch.Tensor:
        """The projector on every patch: (B, N, d_v) -> (B, N, d_q)."""
        return self.connector(V)
