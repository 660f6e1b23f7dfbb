"""Registry, presets, weights modes, the fallback tokenizer, checkpoints."""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, Idefics3Config

from qgsa_bench import QGSAError
from qgsa_bench.models import available_models, load_model, load_preset
from qgsa_bench.qgsa.checkpoint import load_checkpoint, save_checkpoint


def test_registry_names():
    assert available_models() == ["llava-1.5-7b", "llava-tiny", "smolvlm-256m", "smolvlm-500m", "tiny"]
    assert load_preset("llava-1.5-7b")["hub_id"] == "llava-hf/llava-1.5-7b-hf"
    assert load_preset("smolvlm-256m")["hub_id"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert load_preset("smolvlm-500m")["hub_id"] == "HuggingFaceTB/SmolVLM-500M-Instruct"


@pytest.mark.parametrize("name, d_q, layers, heads, kv, mlp, total", [
    ("smolvlm-256m", 576, 30, 9, 3, 1536, 256_484_928),
    ("smolvlm-500m", 960, 32, 15, 5, 2560, 507_482_304),
])
def test_presets_build_the_published_architectures(name, d_q, layers, heads, kv, mlp, total):
    config = Idefics3Config(**load_preset(name)["config"])
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (768, 12, 12, 3072)
    assert (v.patch_size, v.image_size, config.scale_factor, config.image_token_id) == (16, 512, 4, 49190)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
            t.intermediate_size, t.vocab_size) == (d_q, layers, heads, kv, mlp, 49280)
    with torch.device("meta"):  # count without allocating
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == total  # published: ~256M / ~507M


def test_unknown_model_is_one_clear_error():
    with pytest.raises(QGSAError, match="unknown model 'smolvlm-9b': use one of llava-1.5-7b, llava-tiny, smolvlm-256m, smolvlm-500m, tiny"):
        load_model("smolvlm-9b")


def test_pretrained_absent_names_what_was_tried_and_the_ways_out():
    with pytest.raises(QGSAError) as err:
        load_model("smolvlm-256m", weights="pretrained")
    msg = str(err.value)
    assert "HF cache for 'HuggingFaceTB/SmolVLM-256M-Instruct'" in msg
    assert "--model DIR" in msg and "--weights random" in msg
    with pytest.raises(QGSAError, match="has no pretrained weights"):
        load_model("tiny", weights="pretrained")
    with pytest.raises(QGSAError, match="--weights must be one of"):
        load_model("tiny", weights="best")


def test_auto_falls_back_to_random_with_a_warning(tmp_path, tiny):
    tiny.loaded.model.config.save_pretrained(tmp_path / "config-only")  # an architecture, no weights
    warnings = []
    loaded = load_model(str(tmp_path / "config-only"), weights="auto", warn=warnings.append)
    assert loaded.weights == "random" and loaded.provenance()["weights"] == "random"
    assert len(warnings) == 1 and "RANDOM weights" in warnings[0]
    warnings.clear()
    assert load_model("tiny", weights="auto", warn=warnings.append).weights == "random"
    assert warnings == []  # tiny has no pretrained source to miss


def test_local_directory_loads_through_from_pretrained(tmp_path, tiny):
    tiny.loaded.model.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), weights="pretrained")
    assert loaded.weights == "pretrained" and loaded.source == str(tmp_path / "m")
    for (k, v), (k2, v2) in zip(tiny.loaded.model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    random = load_model(str(tmp_path / "m"), weights="random")
    assert random.weights == "random" and random.architecture_hash() == tiny.loaded.architecture_hash()


def test_fallback_tokenizer_keeps_smolvlm_special_ids(tiny):
    tok = tiny.loaded.tokenizer
    ids = tok("<|im_start|>User:<image><end_of_utterance>", add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids[-2:] == [49190, 49279]
    assert len(tok("what color is the circle?", add_special_tokens=False).input_ids) == 6
    assert max(tok.get_vocab().values()) < 49280


def test_checkpoint_roundtrip_and_wrong_base_refused(tmp_path, tiny):
    path = save_checkpoint(tmp_path / "ckpt" / "qgsa.pt", tiny.module, tiny.loaded.provenance())
    module, payload = load_checkpoint(path, tiny.loaded.provenance())
    for k, v in tiny.module.state_dict().items():
        assert torch.equal(module.state_dict()[k], v)
    assert set(payload["qgsa_state"]) == set(tiny.module.state_dict())
    other = dict(tiny.loaded.provenance(), model="smolvlm-256m", architecture_hash="0" * 16)
    with pytest.raises(QGSAError, match="was trained on 'tiny'"):
        load_checkpoint(path, other)
    (tmp_path / "bad.pt").write_text(json.dumps({"not": "a checkpoint"}))
    with pytest.raises(QGSAError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", tiny.loaded.provenance())
