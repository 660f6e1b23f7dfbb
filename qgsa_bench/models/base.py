"""The model-family interface: everything the pipeline, the selectors and the measurements ask of a VLM.

A family (idefics3.py, llava.py) sets, in its constructor, the geometry and the modules below, and
implements the few methods marked "family". Everything else - prompt assembly with left padding,
question embedding, the layer-by-layer LM (lm.py), prefill, cached decoding, teacher forcing - is
shared, so code outside `models/` never asks which family it has.

Vision side, run explicitly so a selector can act inside the encoder (insertion point `vision:L`):
    pixel_values (B, 3, R, R) -> vision_embed -> h (B, P + N, d_v)   (P prefix tokens: CLIP's CLS; 0 for SigLIP)
        -> vision_layer(i, h) for i < vision_depth -> vision_out(h) -> V (B, N, d_v)
The connector turns patches into visual tokens. Its unit is a group of `group_size` = s^2 patches
(Idefics3's pixel shuffle by s; LLaVA: s = 1, one patch). `unit_patches(N)` lists each visual token's
patches; `connect_units(X (B, k, s^2, d_v))` gives the k visual tokens (B, k, d_q) of k whole groups,
exactly the dense connector's tokens for those groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from qgsa_bench import QGSAError
from qgsa_bench.models.images import check_resolution, preprocess
from qgsa_bench.models.lm import LlamaRunner, LMState
from qgsa_bench.models.views import Splitting, Views, make_views, tile_token


@dataclass
class LMInputs:
    inputs_embeds: torch.Tensor  # (B, L, d_q)
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    position_ids: torch.Tensor  # (B, L)
    n_visual: torch.Tensor  # (B,) visual tokens per sample (padding excluded)
    visual_index: torch.Tensor | None = None  # (B, n) position in L of each visual token (0 where invalid)
    visual_valid: torch.Tensor | None = None  # (B, n) bool

    def rows(self, b: int, n: int) -> "LMInputs":
        """Sample b's inputs repeated n times (multiple-choice scoring)."""
        def rep(t):
            return None if t is None else t[b:b + 1].expand(n, *t.shape[1:])
        return LMInputs(rep(self.inputs_embeds), rep(self.attention_mask), rep(self.position_ids),
                        rep(self.n_visual), rep(self.visual_index), rep(self.visual_valid))


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class VLMAdapter:
    """Shared code of every family. Subclasses set the attributes listed in `__init__`'s docstring."""

    family = "base"
    prompt_prefix = ""  # text before the visual tokens (one view)
    prompt_suffix = "{question}"  # text after them
    user_prefix = ""  # with several views (views.image_prompt): the text before the image's pieces
    question_part = "{question}"  # and after them
    answer_prefix = " "  # how an answer starts after the prompt (teacher forcing)
    n_prefix_vision = 0  # tokens before the patches in the vision sequence (CLIP's CLS)
    default_projection = "w_vis"  # how QGSA's selected patches reach the LM unless configured (QGSAConfig)

    def __init__(self, loaded, text_model, lm_head):
        """Subclasses also set: vision_model, vision_layers (the layers that run), connector,
        d_v, d_q, patch_size, image_size, scale_factor, end_ids, pad_id."""
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.text_model = text_model
        self.lm_head = lm_head
        self.lm = LlamaRunner(text_model, lm_head)

    # ---- geometry -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def text_config(self):
        return self.text_model.config

    @property
    def group_size(self) -> int:
        return self.scale_factor ** 2

    @property
    def vision_depth(self) -> int:
        return len(self.vision_layers)

    @property
    def lm_depth(self) -> int:
        return self.lm.depth

    def n_patches(self, resolution: int) -> int:
        return check_resolution(resolution, self.patch_size)

    def dense_resolution(self, resolution: int) -> int:
        """The resolution the dense connector runs at: R rounded up to a multiple of patch_size * s."""
        self.n_patches(resolution)
        unit = self.patch_size * self.scale_factor
        return int(math.ceil(resolution / unit) * unit)

    def n_dense_tokens(self, resolution: int) -> int:
        return self.n_patches(self.dense_resolution(resolution)) // self.group_size

    def resolution_for_tokens(self, k: int) -> int:
        """The largest square resolution whose dense path gives at most k visual tokens (>= 1 token)."""
        side = max(1, math.isqrt(int(k)))
        return side * self.patch_size * self.scale_factor

    def pixel_values(self, images, resolution: int) -> torch.Tensor:
        self.n_patches(resolution)
        x = preprocess(images, resolution, self.loaded.image_mean, self.loaded.image_std)
        return x.to(self.device, self.dtype)

    # ---- the model's own views (models/views.py) ---------------------------------------------
    def splitting(self, split: bool | None = None, longest_edge: int | None = None) -> Splitting:
        """The model's processor settings (LoadedModel.splitting) with `split` / `longest_edge` where given.
        Raises QGSAError for a family without tiles, settings the processor cannot use, a longest edge without
        splitting, or splitting with a tokenizer that has no tile markers."""
        own = self.loaded.splitting
        if own is None:
            raise QGSAError(f"{self.family} models take one view (no tiles): --image-size, --image-splitting and "
                            f"--longest-edge are SmolVLM's (Idefics3) settings; drop them")
        chosen = replace(own, split=own.split if split is None else split,
                         longest_edge=own.longest_edge if longest_edge is None else longest_edge)
        if longest_edge is not None and not chosen.split:
            raise QGSAError(f"--longest-edge {longest_edge} sets where the processor tiles the image, and this model's "
                            f"image splitting is {'off' if split is None else 'turned off'}: "
                            f"{'add --image-splitting' if split is None else 'drop --no-image-splitting'}, or "
                            f"drop --longest-edge")
        chosen.check()
        if chosen.split:
            missing = [t for t in (tile_token(1, 1), "<global-img>") if t not in self.loaded.special_tokens]
            if missing:
                raise QGSAError(f"this model's tokenizer has no {missing[0]} marker, so it cannot read a split image "
                                f"(it was trained on one view): run it on one view (drop the splitting options and tile "
                                f"selectors; train: --insert post-vision)")
        return chosen

    def views(self, images, splitting: Splitting) -> Views:
        """PIL images -> the model's own views (models/views.make_views), on this model's device and dtype."""
        return make_views(images, splitting, self.loaded.image_mean, self.loaded.image_std).to(self.device, self.dtype)

    # ---- vision (family: vision_embed, vision_layer, vision_out) ----------------------------
    def vision_embed(self, pixel_values: torch.Tensor) -> torch.Tensor:  # family
        raise NotImplementedError

    def vision_layer(self, i: int, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Vision layer i on h (B, T, d_v); mask: additive (B, 1, 1, T) over keys, None when all valid."""
        out = self.vision_layers[i](h, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    def vision_out(self, h: torch.Tensor) -> torch.Tensor:  # family: (B, P + N, d_v) -> (B, N, d_v)
        raise NotImplementedError

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> V (B, N, d_v), N = (H/p)(W/p): the encoder run layer by layer."""
        h = self.vision_embed(pixel_values)
        for i in range(self.vision_depth):
            h = self.vision_layer(i, h)
        return self.vision_out(h)

    def vision_attention_received(self, i: int, h: torch.Tensor, mask=None) -> torch.Tensor:
        """Attention each patch receives in vision layer i (its input h (B, P + N, d_v)), averaged over
        heads: from the CLS query where the tower has one (P = 1), else averaged over all patch queries.
        (B, N) float32. Computed from the layer's own norm and q/k projections."""
        layer = self.vision_layers[i]
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        B, T, _ = x.shape
        heads = attn.num_heads
        hd = attn.head_dim
        q = attn.q_proj(x).view(B, T, heads, hd).transpose(1, 2).float()
        k = attn.k_proj(x).view(B, T, heads, hd).transpose(1, 2).float()
        if self.n_prefix_vision:
            q = q[:, :, :1]
        scores = q @ k.transpose(-1, -2) * attn.scale  # (B, H, Tq, T)
        if mask is not None:
            scores = scores + mask.float()
        probs = torch.softmax(scores, dim=-1).mean(dim=(1, 2))  # (B, T)
        return probs[:, self.n_prefix_vision:]

    # ---- connector (family: connect, unit_patches) ------------------------------------------
    def connect(self, V: torch.Tensor) -> torch.Tensor:  # family: (B, N, d_v) -> (B, N / s^2, d_q)
        raise NotImplementedError

    def unit_patches(self, N: int, device=None) -> torch.Tensor:
        """(N / s^2, s^2): the patches of each dense visual token, in raster order within its s x s block."""
        grid = int(math.isqrt(N))
        s = self.scale_factor
        idx = torch.arange(N, device=device).view(grid // s, s, grid // s, s).permute(0, 2, 1, 3)
        return idx.reshape(-1, s * s)

    def connect_units(self, X: torch.Tensor) -> torch.Tensor:
        """X (B, k, s^2, d_v): k whole groups of patches -> their k visual tokens (B, k, d_q)."""
        B, k, g, d = X.shape
        return self.connect(X.reshape(B * k, g, d)).reshape(B, k, -1)

    # ---- text -----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.get_input_embeddings()(input_ids)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenize(text), dtype=torch.long, device=self.device)

    def start_ids(self) -> list[int]:
        """Ids the prompt starts with before any text (a BOS token where the family's tokenizer adds one)."""
        return []

    def prefix_ids(self) -> list[int]:
        return self.start_ids() + self.tokenize(self.prompt_prefix)

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
        """The full prompt with image-token placeholders, as the HF model itself takes it (the text around
        the image tokens is tokenised in pieces, as a tokenizer splits text at special tokens)."""
        return (self.prefix_ids() + [self.image_token_id] * n_image_tokens
                + self.tokenize(self.prompt_suffix.format(question=question)))

    @property
    def image_token_id(self) -> int:
        return self.loaded.special_tokens["<image>"]

    def prompt_pieces(self, question: str, image: list) -> list:
        """The prompt as pieces: text, or an int n for n visual-token slots. `image`: the image's own pieces
        (views.image_prompt: several views with their markers), or [n] for one view in this family's
        layout (prompt_prefix, n tokens, prompt_suffix)."""
        if len(image) == 1:
            return [self.prompt_prefix, image[0], self.prompt_suffix.format(question=question)]
        return [self.user_prefix, *image, self.question_part.format(question=question)]

    def build_inputs(self, visual_tokens: torch.Tensor, questions: list[str],
                     visual_mask: torch.Tensor | None = None, layouts: list[list] | None = None) -> LMInputs:
        """Splice visual tokens (B, n, d_q) (valid where visual_mask) into the prompt; left-pad. `layouts`:
        per sample, the image's pieces (views.image_prompt; their slots take the sample's valid tokens in
        order); None: one view. Consecutive text is tokenised as one string, as the model's processor
        tokenises the whole prompt (special tokens split it the same way)."""
        B = visual_tokens.shape[0]
        if visual_mask is None:
            visual_mask = torch.ones(visual_tokens.shape[:2], dtype=torch.bool, device=visual_tokens.device)
        rows, vis_pos, n_vis = [], [], visual_mask.sum(dim=1)
        for b in range(B):
            vis = visual_tokens[b][visual_mask[b]]
            image = [int(n_vis[b])] if layouts is None else layouts[b]
            row, pos = self._splice(self.prompt_pieces(questions[b], image), vis)
            rows.append(row)
            vis_pos.append(pos)
        L = max(r.shape[0] for r in rows)
        n_max = int(n_vis.max()) if B else 0
        pad = self.embed(torch.tensor([self.pad_id], device=self.device))[0]
        embeds = pad.expand(B, L, -1).clone()
        mask = torch.zeros(B, L, dtype=torch.long, device=self.device)
        vindex = torch.zeros(B, max(n_max, 1), dtype=torch.long, device=self.device)
        vvalid = torch.zeros(B, max(n_max, 1), dtype=torch.bool, device=self.device)
        for b, row in enumerate(rows):
            start = L - row.shape[0]
            embeds[b, start:] = row
            mask[b, start:] = 1
            n = int(n_vis[b])
            vindex[b, :n] = vis_pos[b] + start
            vvalid[b, :n] = True
        return LMInputs(embeds, mask, positions_of(mask), n_vis, vindex, vvalid)

    def prompt_segments(self, pieces: list) -> list:
        """The prompt of `pieces` (`prompt_pieces`) in the order the LM reads it: token-id lists (consecutive text
        tokenised as one string, as the model's processor tokenises the whole prompt; the first after
        `start_ids`) and visual-slot counts (int)."""
        segments, text = [], ""
        for piece in [*pieces, 0]:  # a closing empty slot ends the last text
            if isinstance(piece, str):
                text += piece
                continue
            ids = (self.start_ids() if not segments else []) + (self.tokenize(text) if text else [])
            segments += [ids] if ids else []
            segments += [piece] if piece else []
            text = ""
        return segments

    def prompt_length(self, pieces: list) -> int:
        """Tokens of a prompt given as pieces: its text's tokens plus its visual-token slots."""
        return sum(len(s) if isinstance(s, list) else s for s in self.prompt_segments(pieces))

    def _splice(self, pieces: list, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(one sample's prompt embeddings (L, d_q), the positions (n,) of its n visual tokens `vis` (n, d_q))
        from `pieces` (text, or a count of slots filled from `vis` in order), in the text embeddings' dtype.
        Raises ValueError when the slots do not hold exactly n tokens."""
        parts, positions, used, length, dtype = [], [], 0, 0, self.dtype
        for segment in self.prompt_segments(pieces):
            if isinstance(segment, list):
                parts.append(self.embed(torch.tensor(segment, dtype=torch.long, device=self.device)))
                dtype = parts[-1].dtype
            else:
                parts.append(vis[used: used + segment])
                positions.append(torch.arange(segment, device=self.device) + length)
                used += segment
            length += parts[-1].shape[0]
        if used != vis.shape[0]:
            raise ValueError(f"the prompt has {used} visual-token slots for {vis.shape[0]} visual tokens")
        return torch.cat([p.to(dtype) for p in parts]), torch.cat(positions) if positions else vis.new_zeros(0).long()

    # ---- language model -------------------------------------------------------------------
    def new_cache(self):
        return self.lm.new_cache()

    def lm_forward(self, embeds, mask, positions, cache=None):
        """Normed last hidden states (B, L, d_q) of every LM layer on the whole sequence."""
        return self.lm.run(embeds, mask, positions, cache)[0]

    def logits(self, inputs: LMInputs) -> torch.Tensor:
        """Full-sequence logits (B, L, vocab) of the dense LM (no in-LM selection); tests, teacher forcing."""
        return self.lm_head(self.lm_forward(inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids))

    def prefill(self, inputs: LMInputs) -> tuple[torch.Tensor, LMState]:
        """Run the prompt once through every layer: (next-token logits (B, vocab), state for decoding).
        Selection inside the LM (insertion point lm:K) runs the layers itself: run/lm.py."""
        hidden, state = self.lm.run(inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids,
                                    self.new_cache())
        return self.lm_head(hidden[:, -1]), state

    def decode_step(self, token_ids: torch.Tensor, state: LMState) -> torch.Tensor:
        """One greedy step with the KV cache: token_ids (B,) -> next-token logits (B, vocab)."""
        return self.lm_head(self.lm.decode(self.embed(token_ids[:, None]), state)[:, -1])

    @torch.no_grad()
    def generate(self, inputs: LMInputs, max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy decoding with KV cache; stops at an end token (per sample) or max_new_tokens."""
        logits, state = self.prefill(inputs)
        return self.continue_greedy(logits, state, max_new_tokens)

    @torch.no_grad()
    def continue_greedy(self, logits: torch.Tensor, state: LMState, new_tokens: int,
                        stop: bool = True) -> list[list[int]]:
        """Greedy tokens after a prefill: the prefill's own (from `logits` (B, vocab)), then up to
        new_tokens - 1 cached steps. `stop`: a sample stops at an end token and decoding stops when all have
        (answering); without, every sample gets new_tokens tokens (timing: every run does the same work), as a
        (B, new_tokens) tensor read by nobody until the caller wants it (no host synchronisation per step)."""
        if not stop:
            ids = [logits.argmax(dim=-1)]
            for _ in range(new_tokens - 1):
                ids.append(self.decode_step(ids[-1], state).argmax(dim=-1))
            return torch.stack(ids, dim=1)
        B = logits.shape[0]
        out: list[list[int]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for step in range(new_tokens):
            next_ids = logits.argmax(dim=-1)  # (B,)
            for b in range(B):
                if not done[b]:
                    out[b].append(int(next_ids[b]))
            if stop:
                done |= torch.tensor([int(t) in self.end_ids for t in next_ids], device=self.device)
            if bool(done.all()) or step == new_tokens - 1:
                break
            logits = self.decode_step(next_ids, state)
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

        The answer is tokenised as `answer_prefix + answer`; the end token is not part of it. In-LM
        selection (run/lm.py) ranks visual tokens by the last prompt token, which the appended answer
        cannot change (causal attention), so the kept tokens are those of `prefill`. Differentiable
        w.r.t. inputs.inputs_embeds."""
        embeds, mask, ids, amask = self.teacher_forcing(inputs, answers)
        return self.answer_scores(self.lm_forward(embeds, mask, positions_of(mask)), ids, amask)

    def teacher_forcing(self, inputs: LMInputs, answers: list[str]):
        """The prompt with each answer appended: (embeds (B, L + A, d_q), mask (B, L + A), answer ids (B, A),
        answer mask (B, A))."""
        ans = [self.tokenize(self.answer_prefix + a) or [self.pad_id] for a in answers]
        A = max(len(a) for a in ans)
        B = inputs.attention_mask.shape[0]
        ids = torch.full((B, A), self.pad_id, dtype=torch.long, device=self.device)
        amask = torch.zeros(B, A, dtype=torch.long, device=self.device)
        for b, a in enumerate(ans):
            ids[b, : len(a)] = torch.tensor(a, device=self.device)
            amask[b, : len(a)] = 1
        embeds = torch.cat([inputs.inputs_embeds, self.embed(ids).to(inputs.inputs_embeds.dtype)], dim=1)
        mask = torch.cat([inputs.attention_mask, amask], dim=1)
        return embeds, mask, ids, amask

    def answer_scores(self, hidden: torch.Tensor, ids: torch.Tensor, amask: torch.Tensor) -> torch.Tensor:
        """log P(answer) (B,) from the normed hidden states (B, L', d_q) of a teacher-forced pass."""
        A = ids.shape[1]
        logits = self.lm_head(hidden[:, -A - 1: -1]).float()  # predicts answer tokens
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
        return (logp * amask).sum(dim=1)
