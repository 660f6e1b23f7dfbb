"""The Idefics3 (SmolVLM) adapter: the model's components, used one by one.

Built from `vision_model`, `connector`, `text_model` and `lm_head`, never from the top-level
multimodal forward (whose keyword arguments move between transformers 5.x releases). A test proves
that `dense` inputs through this adapter give the same logits as the HF forward.

Prompt layout (SmolVLM's chat format, one image, no tiling):
    <|im_start|>User:<fake_token_around_image><global-img>[visual tokens]<fake_token_around_image>
    {question}<end_of_utterance>\nAssistant:
The visual tokens are the connector's output (dense) or a selector's projected patches. A batch with
different numbers of visual tokens is LEFT-padded; padded positions carry attention mask 0 and are
excluded from position ids, so they never act as visual (or any) tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from qgsa_bench.models.images import check_resolution, dense_resolution, preprocess
from qgsa_bench.models.registry import LoadedModel

PROMPT_PREFIX = "<|im_start|>User:<fake_token_around_image><global-img>"
PROMPT_SUFFIX = "<fake_token_around_image>{question}<end_of_utterance>\nAssistant:"


@dataclass
class LMInputs:
    inputs_embeds: torch.Tensor  # (B, L, d_q)
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    position_ids: torch.Tensor  # (B, L)
    n_visual: torch.Tensor  # (B,) visual tokens per sample (padding excluded)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class Idefics3Adapter:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        model = loaded.model
        self.model = model
        self.vision_model = model.model.vision_model
        self.connector = model.model.connector
        self.text_model = model.model.text_model
        self.lm_head = model.lm_head
        self.tokenizer = loaded.tokenizer
        cfg = model.config
        self.d_v = cfg.vision_config.hidden_size
        self.d_q = cfg.text_config.hidden_size
        self.patch_size = cfg.vision_config.patch_size
        self.image_size = cfg.vision_config.image_size
        self.scale_factor = cfg.scale_factor
        tokens = loaded.special_tokens
        self.end_ids = {tokens[t] for t in ("<end_of_utterance>", "<|im_end|>") if t in tokens}
        self.pad_id = tokens.get("<|im_end|>", 0)
        # transformers renamed `past_key_values` to `cache` during 5.x; support both.
        params = inspect.signature(self.text_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ---- geometry -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def n_patches(self, resolution: int) -> int:
        return check_resolution(resolution, self.patch_size)

    def dense_resolution(self, resolution: int) -> int:
        return dense_resolution(resolution, self.patch_size, self.scale_factor)

    def n_dense_tokens(self, resolution: int) -> int:
        return self.n_patches(self.dense_resolution(resolution)) // self.scale_factor**2

    def pixel_values(self, images, resolution: int) -> torch.Tensor:
        check_resolution(resolution, self.patch_size)
        x = preprocess(images, resolution, self.loaded.image_mean, self.loaded.image_std)
        return x.to(self.device, self.dtype)

    # ---- vision ---------------------------------------------------------------------------
    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> V (B, N, d_v), N = (H/p)(W/p); any H, W that are multiples of p."""
        return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def connect(self, V: torch.Tensor) -> torch.Tensor:
        """The dense path: pixel shuffle + projection, (B, N, d_v) -> (B, N/s^2, d_q)."""
        return self.connector(V)

    # ---- text -----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.get_input_embeddings()(input_ids)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenize(text), dtype=torch.long, device=self.device)

    def question_lengths(self, questions: list[str]) -> list[int]:
        return [len(self.tokenize(q)) for q in questions]

    def question_embedding(self, questions: list[str]) -> torch.Tensor:
        """q = mean-pooled LM input embeddings of the question tokens (Algorithm 1, line 3): (B, d_q)."""
        pooled = []
        for question in questions:
            ids = self._ids(question)
            if ids.numel() == 0:
                ids = torch.tensor([self.pad_id], device=self.device)
            pooled.append(self.embed(ids).mean(dim=0))
        return torch.stack(pooled)

    def prompt_ids(self, question: str, n_image_tokens: int) -> list[int]:
        """The full prompt with `<image>` placeholders, as the HF model itself takes it."""
        text = PROMPT_PREFIX + "<image>" * n_image_tokens + PROMPT_SUFFIX.format(question=question)
        return self.tokenize(text)

    def build_inputs(self, visual_tokens: torch.Tensor, questions: list[str],
                     visual_mask: torch.Tensor | None = None) -> LMInputs:
        """Splice visual tokens (B, n, d_q) (valid where visual_mask) into the prompt; left-pad."""
        B = visual_tokens.shape[0]
        if visual_mask is None:
            visual_mask = torch.ones(visual_tokens.shape[:2], dtype=torch.bool, device=visual_tokens.device)
        prefix = self.embed(self._ids(PROMPT_PREFIX))
        rows = []
        for b in range(B):
            suffix = self.embed(self._ids(PROMPT_SUFFIX.format(question=questions[b])))
            vis = visual_tokens[b][visual_mask[b]].to(prefix.dtype)
            rows.append(torch.cat([prefix, vis, suffix], dim=0))
        L = max(r.shape[0] for r in rows)
        pad = self.embed(torch.tensor([self.pad_id], device=self.device))[0]
        embeds = pad.expand(B, L, -1).clone()
        mask = torch.zeros(B, L, dtype=torch.long, device=self.device)
        for b, row in enumerate(rows):
            embeds[b, L - row.shape[0]:] = row
            mask[b, L - row.shape[0]:] = 1
        return LMInputs(embeds, mask, _positions(mask), visual_mask.sum(dim=1))

    # ---- language model -------------------------------------------------------------------
    def new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.text_model.config)
        except TypeError:  # older signature
            return DynamicCache()

    def lm_forward(self, embeds, mask, positions, cache=None):
        out = self.text_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                              use_cache=cache is not None, **{self._cache_kw: cache})
        return out.last_hidden_state

    def logits(self, inputs: LMInputs) -> torch.Tensor:
        """Full-sequence logits (B, L, vocab); used by tests and teacher forcing."""
        return self.lm_head(self.lm_forward(inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids))

    def prefill(self, inputs: LMInputs):
        """Run the prompt once; returns (next-token logits (B, vocab), KV cache)."""
        cache = self.new_cache()
        hidden = self.lm_forward(inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids, cache)
        return self.lm_head(hidden[:, -1]), cache

    def decode_step(self, token_ids: torch.Tensor, mask: torch.Tensor, cache):
        """One greedy step with the KV cache: token_ids (B,), mask (B, L+1) including the new token."""
        positions = (mask.sum(dim=1, keepdim=True) - 1)
        hidden = self.lm_forward(self.embed(token_ids[:, None]), mask, positions, cache)
        return self.lm_head(hidden[:, -1])

    @torch.no_grad()
    def generate(self, inputs: LMInputs, max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy decoding with KV cache; stops at <end_of_utterance> (per sample) or max_new_tokens."""
        logits, cache = self.prefill(inputs)
        mask = inputs.attention_mask
        B = mask.shape[0]
        out: list[list[int]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            next_ids = logits.argmax(dim=-1)  # (B,)
            for b in range(B):
                if not done[b]:
                    out[b].append(int(next_ids[b]))
            done |= torch.tensor([int(t) in self.end_ids for t in next_ids], device=self.device)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            logits = self.decode_step(next_ids, mask, cache)
        return out

    def decode_text(self, ids: list[int]) -> str:
        """Decode generated ids; an id the tokenizer has no entry for shows as [id] (fallback tokenizer)."""
        ids = [i for i in ids if i not in self.end_ids]
        known = [self.tokenizer.convert_ids_to_tokens(i) is not None for i in ids]
        if all(known):
            return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        parts, run = [], []
        for i, ok in zip(ids, known):
            if ok:
                run.append(i)
                continue
            if run:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=True).strip())
                run = []
            parts.append(f"[{i}]")
        if run:
            parts.append(self.tokenizer.decode(run, skip_special_tokens=True).strip())
        return " ".join(p for p in parts if p)

    def answer_logprob(self, inputs: LMInputs, answers: list[str]) -> torch.Tensor:
        """log P(answer | prompt) by teacher forcing, summed over the answer tokens: (B,).

        The answer is tokenised as " {answer}" (SmolVLM answers after "Assistant:" with a space);
        the end-of-utterance token is not part of it. Differentiable w.r.t. inputs.inputs_embeds.
        """
        ans = [self.tokenize(" " + a) or [self.pad_id] for a in answers]
        A = max(len(a) for a in ans)
        B, L = inputs.attention_mask.shape
        ids = torch.full((B, A), self.pad_id, dtype=torch.long, device=self.device)
        amask = torch.zeros(B, A, dtype=torch.long, device=self.device)
        for b, a in enumerate(ans):
            ids[b, : len(a)] = torch.tensor(a, device=self.device)
            amask[b, : len(a)] = 1
        embeds = torch.cat([inputs.inputs_embeds, self.embed(ids).to(inputs.inputs_embeds.dtype)], dim=1)
        mask = torch.cat([inputs.attention_mask, amask], dim=1)
        hidden = self.lm_forward(embeds, mask, _positions(mask))
        logits = self.lm_head(hidden[:, L - 1: L - 1 + A]).float()  # predicts answer tokens
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
        return (logp * amask).sum(dim=1)
