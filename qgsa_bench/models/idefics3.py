"""The Idefics3 (SmolVLM) family: SigLIP encoder, pixel-shuffle connector, SmolLM2 (Llama) LM.

Built from `vision_model`, `connector`, `text_model` and `lm_head`, never from the top-level
multimodal forward (whose keyword arguments move between transformers 5.x releases). A test proves
that `dense` inputs through this adapter give the same logits as the HF forward.

Prompt layout (SmolVLM's chat format, one image, no tiling):
    <|im_start|>User:<fake_token_around_image><global-img>[visual tokens]<fake_token_around_image>
    {question}<end_of_utterance>\\nAssistant:
The visual tokens are the connector's output (dense) or a selector's tokens. A batch with different
numbers of visual tokens is LEFT-padded; padded positions carry attention mask 0 and are excluded
from position ids, so they never act as visual (or any) tokens.
"""

from __future__ import annotations

import torch

from qgsa_bench.models.base import VLMAdapter

USER_PREFIX = "<|im_start|>User:"
QUESTION_PART = "{question}<end_of_utterance>\nAssistant:"
PROMPT_PREFIX = USER_PREFIX + "<fake_token_around_image><global-img>"
PROMPT_SUFFIX = "<fake_token_around_image>" + QUESTION_PART


class Idefics3Adapter(VLMAdapter):
    family = "idefics3"
    prompt_prefix = PROMPT_PREFIX
    prompt_suffix = PROMPT_SUFFIX
    user_prefix = USER_PREFIX
    question_part = QUESTION_PART
    answer_prefix = " "  # SmolVLM answers after "Assistant:" with a space
    n_prefix_vision = 0  # SigLIP has no CLS token

    def __init__(self, loaded):
        model = loaded.model
        super().__init__(loaded, model.model.text_model, model.lm_head)
        self.vision_model = model.model.vision_model
        self.vision_layers = list(self.vision_model.encoder.layers)
        self.connector = model.model.connector
        cfg = model.config
        self.d_v = cfg.vision_config.hidden_size
        self.d_q = cfg.text_config.hidden_size
        self.patch_size = cfg.vision_config.patch_size
        self.image_size = cfg.vision_config.image_size
        self.scale_factor = cfg.scale_factor
        tokens = loaded.special_tokens
        self.end_ids = {tokens[t] for t in ("<end_of_utterance>", "<|im_end|>") if t in tokens}
        self.pad_id = tokens.get("<|im_end|>", 0)

    def vision_embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> patch embeddings + position embeddings (B, N, d_v); any multiple of the patch size
        (the position grid is bucketed as the HF model does for every image size)."""
        B, _, H, W = pixel_values.shape
        p = self.patch_size
        patch_mask = torch.ones(B, H // p, W // p, dtype=torch.bool, device=pixel_values.device)
        return self.vision_model.embeddings(pixel_values=pixel_values, patch_attention_mask=patch_mask)

    def vision_out(self, h: torch.Tensor) -> torch.Tensor:
        return self.vision_model.post_layernorm(h)

    def connect(self, V: torch.Tensor) -> torch.Tensor:
        """The dense path: pixel shuffle + projection, (B, N, d_v) -> (B, N/s^2, d_q)."""
        return self.connector(V)
