"""The tiny Qwen2.5-VL loads and generates through the production loaders only.

Weights are random: assert shapes, types, counts and batch/sequential agreement, never text.
"""

from __future__ import annotations

import json

import pytest

from services.tiny import vl as tiny_vl
from tests.tiny import helpers

FAMILY = "vl"
MAX_NEW = 8


@pytest.fixture(scope="module")
def loaded(folder):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return helpers.load_model_and_processor(folder, Qwen2_5_VLForConditionalGeneration)


def test_real_layout(folder, loaded):
    _, processor = loaded
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "vocab.json", "merges.txt", "preprocessor_config.json", "chat_template.json"} <= names  # fmt: skip
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 15 * 2**20

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl"
    tok = processor.tokenizer
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    text = cfg["text_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["rope_scaling"]["mrope_section"]) == head_dim // 2
    assert cfg["vision_config"]["out_hidden_size"] == text["hidden_size"]
    assert text["vocab_size"] >= len(tok)

    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]

    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"]) == (tiny_vl.MIN_PIXELS, tiny_vl.MAX_PIXELS)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"


def test_chat_template_has_real_placeholders(loaded):
    _, processor = loaded
    prompt = helpers.image_prompt(processor, helpers.image(32, 32, 0), "hi")
    assert prompt.startswith("<|im_start|>system\n")  # default system turn, as the real template
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("use_fast", [True, False])
def test_big_image_becomes_few_tokens(folder, use_fast):
    helpers.assert_big_image_becomes_few_tokens(folder, use_fast, tiny_vl)


def test_generate_returns_new_tokens(loaded):
    model, processor = loaded
    new = helpers.generate_for_image(model, processor, helpers.image(200, 300, 2), "Describe this image.", MAX_NEW)
    assert isinstance(processor.batch_decode(new, skip_special_tokens=True)[0], str)


def test_batched_equals_sequential(loaded):
    model, processor = loaded
    texts = ["Describe this image.", "What is it?", "the quick brown fox jumps over the lazy dog"]
    helpers.assert_batched_equals_sequential(model, processor, texts, MAX_NEW)


def test_build_is_deterministic(folder, tmp_path):
    helpers.assert_rebuild_identical(tiny_vl.build, folder, tmp_path)
