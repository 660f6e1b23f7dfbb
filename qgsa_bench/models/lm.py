"""The language model run layer by layer from its HF modules, so a selector can act between any two layers.

Both families here (SmolVLM's SmolLM2, LLaVA-1.5's Vicuna) have a Llama-architecture LM: embeddings,
`layers` (LlamaDecoderLayer), a final RMS norm, rotary position embeddings and a head. `run_layers`
executes them one by one (`run_layers`); selection inside the LM (run/lm.py) runs them a layer at a time and
shrinks the sequence between two layers. After shrinking, the later layers - and their KV cache - hold only
the kept tokens, which keep their original position ids. Every layer runs the model's own attention (SDPA or eager); only a selector that
needs attention weights computes them, for the one layer and the few query rows it needs
(`attention_probs`).

Masks: a float additive mask (B, 1, Lq, Lk) built from a key mask (B, Lk) (0 on left padding and on
pruned slots) and causality; with SDPA and no padding, no mask at all (SDPA's causal kernel). A padded
query row may attend to itself only, so no row is empty (its output is never used).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from qgsa_bench import QGSAError

ATTENTION_KINDS = ("sdpa", "eager")


@dataclass
class LMState:
    """What a prefill leaves for cached decoding. `key_masks[i]`: layer i's valid keys (B, L_i); layers of
    one segment (between two prunings) share one tensor. `mask`: the unpruned prompt mask plus one column
    per generated token (it gives the next position id)."""

    cache: object
    mask: torch.Tensor  # (B, L + t)
    key_masks: list[torch.Tensor] = field(default_factory=list)
    visual_per_layer: list[float] = field(default_factory=list)  # mean visual tokens each layer saw


def causal_mask(key_mask: torch.Tensor, q_len: int, dtype, sdpa: bool):
    """key_mask (B, Lk) -> additive (B, 1, q_len, Lk), or None where SDPA's own causal path is exact."""
    B, Lk = key_mask.shape
    if sdpa and (q_len == Lk or q_len == 1) and bool(key_mask.all()):
        return None
    q_pos = torch.arange(Lk - q_len, Lk, device=key_mask.device)[:, None]  # (q, 1)
    k_pos = torch.arange(Lk, device=key_mask.device)[None, :]  # (1, Lk)
    allowed = (k_pos <= q_pos)[None] & key_mask.bool()[:, None, :]  # (B, q, Lk)
    allowed |= (k_pos == q_pos)[None]  # a padded row sees itself
    out = torch.zeros(B, 1, q_len, Lk, dtype=dtype, device=key_mask.device)
    return out.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (Su et al.) of x (B, H, L, hd) with cos/sin (B, L, hd): the Llama convention."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class LlamaRunner:
    """Executes a Llama-architecture `text_model` (HF LlamaModel) layer by layer."""

    def __init__(self, text_model, lm_head):
        self.text_model = text_model
        self.lm_head = lm_head
        self.layers = list(text_model.layers)
        self.norm = text_model.norm
        self.rotary = text_model.rotary_emb
        self.config = text_model.config
        kind = getattr(self.config, "_attn_implementation", "sdpa") or "sdpa"
        if kind not in ATTENTION_KINDS:
            raise QGSAError(f"attention implementation '{kind}' is not supported by the layer-by-layer run: "
                            f"use one of {', '.join(ATTENTION_KINDS)}")
        self.sdpa = kind == "sdpa"
        # transformers renamed `past_key_values` to `cache` during 5.x; support both.
        params = inspect.signature(self.layers[0].forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def depth(self) -> int:
        return len(self.layers)

    def new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.config)
        except TypeError:  # older signature
            return DynamicCache()

    def layer(self, i: int, h, key_mask, positions, cache, pos_emb=None):
        """Layer i on h (B, L, d) whose keys (with the cache) are valid where key_mask (B, Lk)."""
        if pos_emb is None:
            pos_emb = self.rotary(h, positions)
        mask = causal_mask(key_mask, h.shape[1], h.dtype, self.sdpa)
        out = self.layers[i](h, attention_mask=mask, position_ids=positions, position_embeddings=pos_emb,
                             use_cache=cache is not None, **{self.cache_kw: cache})
        return out[0] if isinstance(out, tuple) else out

    def attention_probs(self, i: int, h, key_mask, positions, rows: torch.Tensor) -> torch.Tensor:
        """Layer i's attention probabilities for query rows `rows` (R,) of its input h (B, L, d):
        (B, heads, R, L), float32, computed from the layer's own norm and projections (prefill only)."""
        layer = self.layers[i]
        attn = layer.self_attn
        B, L, _ = h.shape
        x = layer.input_layernorm(h)
        hd = attn.head_dim
        cos, sin = self.rotary(h, positions)
        q = attn.q_proj(x[:, rows]).view(B, len(rows), -1, hd).transpose(1, 2)  # (B, H, R, hd)
        k = attn.k_proj(x).view(B, L, -1, hd).transpose(1, 2)  # (B, Hk, L, hd)
        q, k = _rope(q, cos[:, rows], sin[:, rows]), _rope(k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # (B, H, R, L)
        full = causal_mask(key_mask, L, torch.float32, sdpa=False)  # (B, 1, L, L)
        return torch.softmax(scores + full[:, :, rows], dim=-1)

    def run(self, embeds, mask, positions, cache=None) -> tuple[torch.Tensor, LMState]:
        """All layers on embeds (B, L, d): the normed hidden states (B, L, d) and the state for decoding."""
        state = LMState(cache, mask)
        h, _ = self.run_layers(embeds, mask, positions, range(self.depth), state)
        return self.norm(h), state

    def run_layers(self, h, key_mask, positions, layers: range, state: LMState, pos_emb=None,
                   visual: float = float("nan")):
        """`layers` in order on h (B, L, d) with keys valid where key_mask (B, Lk); each layer's key mask and
        `visual` (the visual tokens it sees, NaN: all) are appended to `state`. -> (h, the rotary
        embeddings of `positions`, for the next layers of the same sequence)."""
        if pos_emb is None:
            pos_emb = self.rotary(h, positions)
        for i in layers:
            h = self.layer(i, h, key_mask, positions, state.cache, pos_emb)
            state.key_masks.append(key_mask)
            state.visual_per_layer.append(visual)
        return h, pos_emb

    def decode(self, embeds, state: LMState) -> torch.Tensor:
        """One cached step for embeds (B, 1, d); updates `state`; returns the normed hidden (B, 1, d)."""
        ones = torch.ones_like(state.mask[:, :1])
        state.mask = torch.cat([state.mask, ones], dim=1)
        positions = state.mask.sum(dim=1, keepdim=True) - 1  # (B, 1): original positions continue
        pos_emb = self.rotary(embeds, positions)
        h = embeds
        grown: dict[int, torch.Tensor] = {}  # one new tensor per segment
        for i in range(self.depth):
            old = state.key_masks[i]
            if id(old) not in grown:
                grown[id(old)] = torch.cat([old, ones], dim=1)
            new = grown[id(old)]
            state.key_masks[i] = new
            h = self.layer(i, h, new, positions, state.cache, pos_emb)
        return self.norm(h)
