"""Frozen text encoders phi(n) for the patch-noun alignment loss (L_align), with a cache.

* `clip`: the CLIP ViT-B/32 text encoder through open_clip (`pretrained='openai'`, or a local
  open_clip checkpoint file). Its weights cannot be downloaded here; without them this stops with
  one line naming the two ways out.
* `lm`: the frozen LM's own input embeddings, mean-pooled over the noun's tokens (d_q wide), so W_p
  maps d_v -> d_q. Works offline with any base model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qgsa_bench import QGSAError

ENCODERS = ("clip", "lm")
CLIP_DIM = 512


class CachedEncoder:
    """phi(noun) -> (dim,) float tensor, computed once per noun."""

    def __init__(self, encode, dim: int, name: str):
        self._encode, self.dim, self.name = encode, dim, name
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, nouns: list[str]) -> torch.Tensor:
        missing = [n for n in nouns if n not in self._cache]
        if missing:
            for noun, vector in zip(missing, self._encode(missing)):
                self._cache[noun] = vector.float()
        return torch.stack([self._cache[n] for n in nouns]) if nouns else torch.zeros(0, self.dim)


def lm_encoder(adapter) -> CachedEncoder:
    def encode(nouns):
        return [adapter.embed(torch.tensor(adapter.tokenize(" " + n) or [adapter.pad_id],
                                           device=adapter.device)).mean(0) for n in nouns]

    return CachedEncoder(encode, adapter.d_q, "lm-input-embeddings")


def clip_encoder(checkpoint: str | None, device) -> CachedEncoder:
    import open_clip

    from qgsa_bench.hub import hub_reachable

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise QGSAError(f"CLIP checkpoint not found: {checkpoint}")
    pretrained = checkpoint or "openai"
    if checkpoint is None and not hub_reachable():
        _clip_missing("the hub is not reachable and no local checkpoint was given")
    try:
        model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=pretrained)
    except Exception as err:  # open_clip raises many kinds when weights are missing or corrupt
        _clip_missing(f"open_clip could not load pretrained='{pretrained}': {err.__class__.__name__}")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    model = model.to(device).eval().requires_grad_(False)

    def encode(nouns):
        return model.encode_text(tokenizer(nouns).to(device))

    return CachedEncoder(encode, CLIP_DIM, f"clip-vit-b-32:{pretrained}")


def _clip_missing(why: str):
    raise QGSAError(f"CLIP ViT-B/32 text encoder weights are not available ({why}): pass "
                    f"--clip-checkpoint PATH (a local open_clip checkpoint), or use --align-encoder lm")


def make_encoder(name: str, adapter, checkpoint: str | None = None) -> CachedEncoder:
    if name == "lm":
        return lm_encoder(adapter)
    if name == "clip":
        return clip_encoder(checkpoint, adapter.device)
    raise QGSAError(f"--align-encoder must be one of {', '.join(ENCODERS)}, got '{name}'")
