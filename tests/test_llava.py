"""The LLaVA-1.5 family through the same interface: dense path == HF forward, geometry, presets, errors."""


import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app


@torch.no_grad()
def test_llava_dense_path_equals_hf_forward(llava_tiny, images):
    a = llava_tiny.adapter
    questions = ["what color is the circle?", "is there a blue square on the left of the red one?"]
    prepared = llava_tiny.run("dense").prepare(images, questions, 84)
    assert prepared.inputs.n_visual.tolist() == [36, 36]  # (84 / 14)^2 patches, one token each
    ours = a.logits(prepared.inputs)
    pixel_values = a.pixel_values(images, 84)
    for b, question in enumerate(questions):
        ids = a.prompt_ids(question, 36)
        assert ids[0] == 1 and ids.count(32000) == 36  # BOS, then the image tokens
        hf = llava_tiny.loaded.model(input_ids=torch.tensor([ids]), pixel_values=pixel_values[b:b + 1],
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
        assert prepared.inputs.attention_mask[b].sum().item() == len(ids)
        torch.testing.assert_close(ours[b, -len(ids):], hf, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_llava_features_stop_at_the_feature_layer(llava_tiny, images):
    a = llava_tiny.adapter
    assert a.vision_depth == 2 and len(a.vision_model.encoder.layers) == 3  # layer -2 of 3
    px = a.pixel_values(images, 84)
    hf = a.model.model.get_image_features(pixel_values=px, vision_feature_layer=-2,
                                          vision_feature_select_strategy="default")
    hf = torch.stack(list(hf.pooler_output)) if hasattr(hf, "pooler_output") else hf
    torch.testing.assert_close(a.connect(a.patch_features(px)), hf, rtol=1e-5, atol=1e-5)


def test_llava_7b_preset_is_the_published_architecture():
    from transformers import LlavaConfig

    from qgsa_bench.models.registry import load_preset

    c = LlavaConfig(**{k: v for k, v in load_preset("llava-1.5-7b")["config"].items() if k != "model_type"})
    v, t = c.vision_config, c.text_config
    assert (v.image_size, v.patch_size, v.num_hidden_layers, v.hidden_size, v.intermediate_size,
            v.num_attention_heads) == (336, 14, 24, 1024, 4096, 16)
    assert (c.vision_feature_layer, c.vision_feature_select_strategy, c.image_token_id) == (-2, "default", 32000)
    assert (c.projector_hidden_act, c.multimodal_projector_bias) == ("gelu", True)
    assert (t.num_hidden_layers, t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads,
            t.vocab_size, t.max_position_embeddings, t.rms_norm_eps) == (32, 4096, 11008, 32, 32, 32064, 4096, 1e-5)


def test_llava_geometry(llava_tiny):
    a = llava_tiny.adapter
    assert (a.patch_size, a.scale_factor, a.group_size, a.n_prefix_vision) == (14, 1, 1, 1)
    assert a.n_dense_tokens(336) == 576 and a.dense_resolution(336) == 336
    with pytest.raises(QGSAError, match="not a positive multiple of the patch size 14"):
        a.n_patches(330)


def test_info_counts_llava_7b_without_building_it():
    result = CliRunner().invoke(app, ["info", "--model", "llava-1.5-7b", "--weights", "random"])
    assert result.exit_code == 0, result.output
    assert "7,063,427,072" in result.output and "~7.06B" in result.output
    assert "303,507,456" in result.output and "20,979,712" in result.output  # CLIP ViT-L/14, projector


@pytest.mark.parametrize("pipeline", ["dense", "dense-bypass", "qgsa", "random", "norm", "fastv", "pdrop",
                                      "sparsevlm", "visionzip", "divprune", "downsample", "qgsa-vision"])
def test_ask_works_with_llava_tiny_for_every_pipeline(pipeline, image_path):
    args = ["ask", "--model", "llava-tiny", "--weights", "random", "--image", str(image_path),
            "--question", "what color is the circle?", "--pipeline", pipeline, "--resolution", "84",
            "--max-new-tokens", "3", *([] if pipeline.startswith("dense") else ["--k", "9"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output or "random" in result.output


def _save_llava(tmp_path, drop=None, **changes):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from qgsa_bench.models.registry import load_preset

    config = dict(load_preset("llava-tiny")["config"])
    config.update(changes)
    model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    model.save_pretrained(tmp_path)
    if drop:
        from safetensors.torch import load_file, save_file

        path = tmp_path / "model.safetensors"
        tensors = {k: v for k, v in load_file(path).items() if drop not in k}
        save_file(tensors, path, metadata={"format": "pt"})
    return tmp_path


def test_llava_checkpoint_without_its_vision_tower_is_refused(tmp_path, image_path):
    folder = _save_llava(tmp_path, drop="vision_tower")
    result = CliRunner().invoke(app, ["ask", "--model", str(folder), "--weights", "pretrained", "--image",
                                      str(image_path), "--question", "what?", "--resolution", "84"])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "lacks" in last and "vision_tower" in last
    assert "LOAD REPORT" not in result.output


def test_llava_checkpoint_with_another_feature_strategy_is_refused(tmp_path, image_path):
    folder = _save_llava(tmp_path, vision_feature_select_strategy="full")
    result = CliRunner().invoke(app, ["ask", "--model", str(folder), "--weights", "pretrained", "--image",
                                      str(image_path), "--question", "what?", "--resolution", "84"])
    assert result.exit_code == 2 and "vision_feature_select_strategy 'default'" in result.output


def test_llava_checkpoint_whose_image_token_count_does_not_match_the_features_is_refused(tmp_path, image_path):
    folder = _save_llava(tmp_path, image_seq_length=577)
    result = CliRunner().invoke(app, ["ask", "--model", str(folder), "--weights", "pretrained", "--image",
                                      str(image_path), "--question", "what?", "--resolution", "84"])
    assert result.exit_code == 2 and "image_seq_length 577" in result.output and "36" in result.output


def test_a_model_too_large_for_free_memory_is_refused_before_building(monkeypatch, image_path):
    from qgsa_bench.models import registry

    monkeypatch.setattr(registry, "_available_bytes", lambda: 8 * 2**20)  # 8 MiB free
    result = CliRunner().invoke(app, ["ask", "--model", "llava-tiny", "--weights", "random", "--image",
                                      str(image_path), "--question", "what?", "--dtype", "fp32"])
    assert result.exit_code == 2
    assert "4.3M parameters in float32 need 0.02 GiB; 0.01 GiB is free here: use --dtype bf16" in result.output
