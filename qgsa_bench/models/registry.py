"""Model registry: the names users type, their shipped architecture presets, and loading.

`load_model(name_or_dir, weights)` returns a `LoadedModel` that says exactly what was built:
pretrained weights (`from_pretrained` from a local directory, the HF cache or the hub) or random
weights (the architecture preset, or a local directory's config.json, built with a fixed seed).
FLOPs and latency do not depend on weight values; accuracy does, so every output carries `weights`.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
import json
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from qgsa_bench import QGSAError
from qgsa_bench.hub import hub_reachable
from qgsa_bench.models.tokenizer import FALLBACK_KIND, build_fallback_tokenizer
from qgsa_bench.models.views import Splitting, tile_tokens

WEIGHTS_CHOICES = ("auto", "pretrained", "random")
SUPPORTED_MODEL_TYPES = ("idefics3", "llava")
# The special tokens each family's prompt uses (looked up in a pretrained tokenizer).
FAMILY_TOKENS = {
    "idefics3": ("<|im_start|>", "<|im_end|>", "<global-img>", "<fake_token_around_image>", "<image>",
                 "<end_of_utterance>", *tile_tokens()),
    "llava": ("<unk>", "<s>", "</s>", "<image>", "<pad>"),
}
FALLBACK_PRESET = {"idefics3": "smolvlm-256m", "llava": "llava-1.5-7b"}
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
    """A built VLM (any supported family) plus everything an output must say about where it came from."""

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
    splitting: Splitting | None = None  # the processor's views (models/views.py); None: a family without tiles

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> str:
        return self.model.config.model_type

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
        "scale_factor": getattr(config, "scale_factor", None),
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
            with _quiet_transformers():  # its load report would precede our one-line error
                model, info = AutoModelForImageTextToText.from_pretrained(
                    source, dtype=dtype, attn_implementation=attn, local_files_only=local_only,
                    output_loading_info=True)
        except (OSError, ValueError) as err:
            tried.append(f"{where} ({str(err).splitlines()[0][:120]})")
            continue
        _check_complete(source, info)
        return model, _processor(source, local_only), tried
    return None, None, tried


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _check_complete(source: str, info: dict) -> None:
    """A checkpoint whose files lack some of the architecture's weights (a missing vision tower, say) would
    run with those weights random: refuse it instead."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        parts = sorted({".".join(k.split(".")[:3]) for k in missing})
        raise QGSAError(f"the checkpoint at '{source}' lacks {len(missing)} weight tensors of its architecture "
                        f"({', '.join(parts[:4])}{', ...' if len(parts) > 4 else ''}): point --model at a complete "
                        f"checkpoint (config.json and every *.safetensors shard), or use --weights random")


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


def _random_model(config, dtype, attn: str, seed: int, device="cpu"):
    """The architecture with random weights (seeded). On the meta device nothing is allocated: parameter
    counts and shapes only (`qgsa info`)."""
    from transformers import AutoModelForImageTextToText

    if str(device) == "meta":
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    device = torch.device(device)
    if device.type == "cpu":
        _check_memory(config, dtype)
    # built on the device itself: a 7B model is initialised on the GPU in seconds, not on the host in minutes
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), torch.device(device):  # a fixed seed, the caller's RNG untouched
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    return model


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(config, dtype) -> None:
    """Refuse to build a model that cannot fit in this machine's free memory (a 7B model in float32 needs
    28 GB) with an error that says what fits, instead of being killed half way."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForImageTextToText.from_config(config).parameters())
    need = params * torch.empty((), dtype=dtype).element_size()
    free = _available_bytes()
    if free is not None and need > 0.9 * free:
        size = f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.1f}M"
        raise QGSAError(f"{size} parameters in {str(dtype).removeprefix('torch.')} need "
                        f"{need / 2**30:.2f} GiB; {free / 2**30:.2f} GiB is free here: use --dtype bf16, a GPU "
                        f"(--device cuda), or a smaller model (`qgsa info` counts it without building it)")


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
    from transformers import AutoConfig

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
        config = AutoConfig.from_pretrained(name) if is_dir else _preset_config(preset)
        if weights == "auto" and (is_dir or preset["hub_id"]):
            warn(f"no pretrained weights for '{name}' here: using RANDOM weights (outputs are labelled so)")
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise QGSAError(f"'{name}' is a {config.model_type} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        model = _random_model(config, dtype, attn_implementation, seed, device)
        loaded_weights = "random"
    else:
        loaded_weights = "pretrained"

    if model.config.model_type not in SUPPORTED_MODEL_TYPES:
        raise QGSAError(f"'{name}' is a {model.config.model_type} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if str(device) != "meta":
        model.to(device)
    model.eval().requires_grad_(False)
    return _package(name, source, loaded_weights, model, processor, preset)


def _preset_config(preset: dict):
    from transformers import AutoConfig

    config = dict(preset["config"])
    return AutoConfig.for_model(config.pop("model_type"), **config)


def _package(name, source, weights, model, processor, preset) -> LoadedModel:
    family = model.config.model_type
    tokens = dict(preset["tokens"]) if preset else {}
    tokenizer = getattr(processor, "tokenizer", None) if processor is not None else None
    if tokenizer is not None:
        for tok in FAMILY_TOKENS[family]:
            tid = tokenizer.convert_tokens_to_ids(tok)
            if tid is not None and tid != tokenizer.unk_token_id:
                tokens[tok] = tid
        kind = "pretrained"
    else:
        if not tokens:
            tokens = dict(load_preset(FALLBACK_PRESET[family])["tokens"])
        if family == "idefics3":  # SmolVLM's tile markers keep their published ids too
            tokens = {**tile_tokens(), **tokens}
        tokenizer = build_fallback_tokenizer(tokens, model.config.text_config.vocab_size)
        kind = FALLBACK_KIND
    tokens["<image>"] = model.config.image_token_id
    image_processor = getattr(processor, "image_processor", None)
    family_preset = preset or load_preset(FALLBACK_PRESET[family])
    mean = tuple(getattr(image_processor, "image_mean", None) or family_preset.get("image_mean") or DEFAULT_MEAN)
    std = tuple(getattr(image_processor, "image_std", None) or family_preset.get("image_std") or DEFAULT_STD)
    return LoadedModel(
        name=name, source=source, weights=weights, tokenizer_kind=kind, model=model, tokenizer=tokenizer,
        image_mean=mean, image_std=std, special_tokens=tokens,
        published_params=(preset or {}).get("published_params"),
        splitting=_splitting(model.config, image_processor, preset),
    )


def _splitting(config, image_processor, preset) -> Splitting | None:
    """The model's own views: its image processor's settings (a pretrained model), else its preset's
    `processor`, else one view of the encoder's size (a model saved without a processor). None for a
    family without tiles (LLaVA)."""
    if config.model_type != "idefics3":
        return None
    tile = config.vision_config.image_size
    if image_processor is not None and hasattr(image_processor, "do_image_splitting"):
        size = getattr(image_processor, "size", None) or {}
        most = getattr(image_processor, "max_image_size", None) or {}
        resample = getattr(image_processor, "resample", 1)
        return Splitting(bool(image_processor.do_image_splitting), int(size.get("longest_edge", 4 * tile)),
                         int(most.get("longest_edge", tile)), int(getattr(resample, "value", resample)))
    settings = (preset or {}).get("processor")
    if settings:
        return Splitting(settings["do_image_splitting"], settings["longest_edge"], settings["max_image_size"],
                         settings.get("resample", 1))
    return Splitting(False, 4 * tile, tile)
