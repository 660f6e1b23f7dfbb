"""The offline fallback tokenizer, used only when a model's real tokenizer cannot be loaded.

SmolVLM's own tokenizer (a 49k-entry BPE) cannot be downloaded here, yet a random-weight model
still needs token ids whose *count* is realistic, since FLOPs and latency depend on sequence length.
The fallback is a WordPiece tokenizer built with the `tokenizers` library from a shipped word list
(`presets/fallback_words.txt`): common words are one token (as in the real BPE), any other ASCII word
splits into pieces, down to single characters. The special tokens keep SmolVLM's published ids
(`tokens` in each preset), so prompts have the same layout and `image_token_id` still marks images.
Every output records which tokenizer was used ("pretrained" or "fallback-wordpiece").
"""

from __future__ import annotations

import string
from importlib import resources

FALLBACK_KIND = "fallback-wordpiece"
UNK = "<unk>"


def _word_list() -> list[str]:
    text = resources.files("qgsa_bench.models").joinpath("presets/fallback_words.txt").read_text()
    words: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        words.extend(w.lower() for w in line.split())
    return words


def build_fallback_tokenizer(special_tokens: dict[str, int], vocab_size: int):
    """A `PreTrainedTokenizerFast` over a WordPiece vocabulary; ids never reach `vocab_size`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = dict(special_tokens)
    taken = set(vocab.values())
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    entries = [UNK] + pieces + ["##" + p for p in pieces] + _word_list()
    next_id = 0
    for entry in entries:
        if entry in vocab:
            continue
        while next_id in taken:
            next_id += 1
        vocab[entry] = next_id
        taken.add(next_id)
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"fallback tokenizer needs ids up to {max(vocab.values())}, model vocab is {vocab_size}")

    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=64))
    tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        bos_token="<|im_start|>" if "<|im_start|>" in special_tokens else None,
        eos_token="<end_of_utterance>" if "<end_of_utterance>" in special_tokens else None,
        pad_token="<|im_end|>" if "<|im_end|>" in special_tokens else None,
    )


WORD_LEVEL_KIND = "word-level"


def build_word_tokenizer(texts: list[str], special_tokens: list[str]):
    """A word-level `PreTrainedTokenizerFast` over the words of `texts` (issue: base-train).

    Lower-cased, split on whitespace and punctuation; special tokens first (ids 0..), then the words
    in sorted order, so the same texts always give the same ids."""
    import re

    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text.lower())} | set(string.digits))
    vocab = {tok: i for i, tok in enumerate([*special_tokens, UNK])}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, bos_token="<|im_start|>",
                                   eos_token="<end_of_utterance>", pad_token="<|im_end|>")
