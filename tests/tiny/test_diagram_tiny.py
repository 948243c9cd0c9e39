"""The tiny Qwen3-VL + LoRA adapters load and generate through the production loaders only.

Weights are random: assert shapes, types, counts, batch/sequential agreement and that adapters change
logits, never text.
"""

from __future__ import annotations

import json

import pytest

from services.tiny import diagram as tiny_diagram
from tests.tiny import helpers

FAMILY = "diagram"
MAX_NEW = 8


@pytest.fixture(scope="module")
def loaded(folder):
    from peft import PeftModel
    from transformers import Qwen3VLForConditionalGeneration

    base, processor = helpers.load_model_and_processor(folder, Qwen3VLForConditionalGeneration)
    model = PeftModel.from_pretrained(base, folder / "adapters" / "default", adapter_name="default")
    model.load_adapter(folder / "adapters" / "alt", adapter_name="alt")
    model.set_adapter("default")
    model.eval()
    return model, processor


def test_real_layout(folder, loaded):
    from safetensors import safe_open

    _, processor = loaded
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json"} <= names  # fmt: skip
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 15 * 2**20

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl"
    vision, text = cfg["vision_config"], cfg["text_config"]
    assert all(i < vision["depth"] for i in vision["deepstack_visual_indexes"])
    assert len(vision["deepstack_visual_indexes"]) <= text["num_hidden_layers"]
    assert sum(text["rope_scaling"]["mrope_section"]) == text["head_dim"] // 2
    assert cfg["image_token_id"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": tiny_diagram.MIN_PIXELS, "longest_edge": tiny_diagram.MAX_PIXELS}
    assert (pre["min_pixels"], pre["max_pixels"]) == (tiny_diagram.MIN_PIXELS, tiny_diagram.MAX_PIXELS)

    for name in tiny_diagram.ADAPTERS:
        adapter = folder / "adapters" / name
        assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        acfg = json.loads((adapter / "adapter_config.json").read_text())
        assert set(acfg["target_modules"]) == set(tiny_diagram.LORA_TARGETS)
        assert acfg["init_lora_weights"] is False and acfg["peft_type"] == "LORA"
        with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
            keys = list(f.keys())
        assert len(keys) == 2 * text["num_hidden_layers"] * len(tiny_diagram.LORA_TARGETS)  # A and B each
        assert all("language_model" in k and "visual" not in k for k in keys)


@pytest.mark.parametrize("use_fast", [True, False])
def test_big_image_becomes_few_tokens(folder, use_fast):
    helpers.assert_big_image_becomes_few_tokens(folder, use_fast, tiny_diagram)


def test_generate_with_adapter(loaded):
    model, processor = loaded
    model.set_adapter("default")
    helpers.generate_for_image(model, processor, helpers.image(240, 320, 2), "Recognise this diagram.", MAX_NEW)


def test_batched_equals_sequential_with_adapter(loaded):
    model, processor = loaded
    model.set_adapter("default")
    texts = ["Describe this diagram.", "What is it?", "| step | action | role | the quick brown fox"]
    helpers.assert_batched_equals_sequential(model, processor, texts, MAX_NEW)


def test_adapters_and_base_give_different_logits(loaded):
    import torch

    model, processor = loaded
    img = helpers.image(128, 128, 6)
    inputs = processor(text=[helpers.image_prompt(processor, img, "hello")], images=[img], return_tensors="pt")

    def last_logits():
        with torch.no_grad():
            return model(**inputs).logits[0, -1]

    model.set_adapter("default")
    default = last_logits()
    model.set_adapter("alt")
    alt = last_logits()
    with model.disable_adapter():
        base = last_logits()
    model.set_adapter("default")
    assert default.shape == alt.shape == base.shape == (model.base_model.model.config.text_config.vocab_size,)
    for a, b in [(default, alt), (default, base), (alt, base)]:
        assert (a - b).abs().max().item() > 1e-2


def test_build_is_deterministic(folder, tmp_path):
    helpers.assert_rebuild_identical(tiny_diagram.build, folder, tmp_path)
