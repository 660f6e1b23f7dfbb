"""Model registry: the names users type, their shipped architecture presets, and loading.

`load_model(name_or_dir, weights)` returns a `LoadedModel` that says exactly what was built:
pretrained weights (`from_pretrained` from a local directory, the HF cache or the hub) or random
weights (the architecture preset, or a local directory's config.json, built with a fixed seed).
FLOPs and latency do not depend on weight values; accuracy does, so every output carries `weights`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from qgsa_bench import QGSAError
from qgsa_bench.hub import hub_reachable
from qgsa_bench.models.tokenizer import FALLBACK_KIND, build_fallback_tokenizer

WEIGHTS_CHOICES = ("auto", "pretrained", "random")
SUPPORTED_MODEL_TYPES = ("idefics3",)
# SmolVLM's image processor settings, used when a model directory ships none.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def available_models() -> list[str]:
    presets = resources.files("qgsa_bench.models").joinpath("presets")
    return sorted(p.name[: -len(".json")] for p in presets.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict:
    path = resources.files("qgsa_bench.models").joinpath(f"presets/{name}.json")
    if not path.is_file():
        raise QGSAError(
            f"unknown model '{name}': use one of {', '.join(available_models())} or a local model directory"
        )
    return json.loads(path.read_text())


@dataclass
class LoadedModel:
    """A built Idefics3 model plus everything an output must say about where it came from."""

    name: str  # what the user typed
    source: str  # hub id, local directory, or "preset:<name>"
    weights: str  # "pretrained" | "random"
    tokenizer_kind: str  # "pretrained" | "fallback-wordpiece"
    model: torch.nn.Module
    tokenizer: object
    image_mean: tuple[float, ...] = DEFAULT_MEAN
    image_std: tuple[float, ...] = DEFAULT_STD
    special_tokens: dict[str, int] = field(default_factory=dict)
    published_params: int | None = None

    @property
    def config(self):
        return self.model.config

    def architecture_hash(self) -> str:
        """A short hash of the architecture (not the weights): checkpoints refuse a different base."""
        return architecture_hash(self.model.config)

    def provenance(self) -> dict:
        return {
            "model": self.name,
            "model_source": self.source,
            "weights": self.weights,
            "tokenizer": self.tokenizer_kind,
            "architecture_hash": self.architecture_hash(),
        }


def architecture_hash(config) -> str:
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "patch_size", "image_size", "vocab_size")
    arch = {
        "scale_factor": config.scale_factor,
        "vision": {k: getattr(config.vision_config, k, None) for k in keep},
        "text": {k: getattr(config.text_config, k, None) for k in keep},
    }
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def _from_pretrained(source: str, dtype, attn: str):
    """Try the local directory / HF cache, then the hub if it answers. Returns (model, processor, tried)."""
    from transformers import AutoModelForImageTextToText

    tried: list[str] = []
    attempts = [True] if Path(source).is_dir() else [True, False]
    for local_only in attempts:
        if not local_only and not hub_reachable():
            tried.append(f"the hub for '{source}' (not reachable)")
            break
        where = f"local directory {source}" if Path(source).is_dir() else (
            f"HF cache for '{source}'" if local_only else f"the hub for '{source}'")
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, attn_implementation=attn, local_files_only=local_only)
        except (OSError, ValueError) as err:
            tried.append(f"{where} ({str(err).splitlines()[0][:120]})")
            continue
        return model, _processor(source, local_only), tried
    return None, None, tried


def _processor(source: str, local_only: bool):
    """The model's processor; else its tokenizer alone (models saved by `qgsa base-train`); else None."""
    from types import SimpleNamespace

    from transformers import AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
        if getattr(processor, "tokenizer", None) is not None:
            return processor
    except (OSError, ValueError, TypeError, KeyError):
        pass
    try:
        return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(source, local_files_only=local_only),
                               image_processor=None)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _random_model(config, dtype, attn: str, seed: int):
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    return model


def load_model(
    name: str,
    weights: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    warn=warnings.warn,
) -> LoadedModel:
    """Build `name` (a registry name or a local model directory) with the requested weights."""
    from transformers import AutoConfig, Idefics3Config

    if weights not in WEIGHTS_CHOICES:
        raise QGSAError(f"--weights must be one of {', '.join(WEIGHTS_CHOICES)}, got '{weights}'")
    is_dir = Path(name).is_dir()
    preset = None if is_dir else load_preset(name)
    source = name if is_dir else (preset["hub_id"] or f"preset:{name}")

    model = processor = None
    if weights in ("auto", "pretrained") and (is_dir or preset["hub_id"]):
        model, processor, tried = _from_pretrained(source, dtype, attn_implementation)
        if model is None and weights == "pretrained":
            raise QGSAError(
                f"pretrained weights for '{name}' not found (tried: {'; '.join(tried)}): put them in a local "
                f"directory and pass --model DIR (or fill the HF cache), or use --weights random"
            )
    elif weights == "pretrained":
        raise QGSAError(f"'{name}' has no pretrained weights (a test architecture): use --weights random")

    if model is None:
        config = AutoConfig.from_pretrained(name) if is_dir else Idefics3Config(**preset["config"])
        if weights == "auto" and (is_dir or preset["hub_id"]):
            warn(f"no pretrained weights for '{name}' here: using RANDOM weights (outputs are labelled so)")
        model = _random_model(config, dtype, attn_implementation, seed)
        loaded_weights = "random"
    else:
        loaded_weights = "pretrained"

    if model.config.model_type not in SUPPORTED_MODEL_TYPES:
        raise QGSAError(f"'{name}' is a {model.config.model_type} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    model.to(device).eval().requires_grad_(False)
    return _package(name, source, loaded_weights, model, processor, preset)


def _package(name, source, weights, model, processor, preset) -> LoadedModel:
    tokens = dict(preset["tokens"]) if preset else {}
    tokenizer = getattr(processor, "tokenizer", None) if processor is not None else None
    if tokenizer is not None:
        for tok in ("<|im_start|>", "<|im_end|>", "<global-img>", "<fake_token_around_image>",
                    "<image>", "<end_of_utterance>"):
            tid = tokenizer.convert_tokens_to_ids(tok)
            if tid is not None and tid != tokenizer.unk_token_id:
                tokens[tok] = tid
        kind = "pretrained"
    else:
        if not tokens:
            tokens = dict(load_preset("smolvlm-256m")["tokens"])
        tokenizer = build_fallback_tokenizer(tokens, model.config.text_config.vocab_size)
        kind = FALLBACK_KIND
    tokens["<image>"] = model.config.image_token_id
    image_processor = getattr(processor, "image_processor", None)
    mean = tuple(getattr(image_processor, "image_mean", None) or (preset or {}).get("image_mean") or DEFAULT_MEAN)
    std = tuple(getattr(image_processor, "image_std", None) or (preset or {}).get("image_std") or DEFAULT_STD)
    return LoadedModel(
        name=name, source=source, weights=weights, tokenizer_kind=kind, model=model, tokenizer=tokenizer,
        image_mean=mean, image_std=std, special_tokens=tokens,
        published_params=(preset or {}).get("published_params"),
    )
