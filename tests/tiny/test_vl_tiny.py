"""The tiny Qwen2.5-VL loads and generates through the production loaders only.

Weights are random: assert shapes, types, counts and batch/sequential agreement, never text.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.tiny import ensure
from services.tiny import vl as tiny_vl

MAX_NEW = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return ensure("vl", root=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(folder):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return model, processor


def _image(h: int, w: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _prompt(processor, image, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _new_tokens(model, inputs):
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return [row.tolist() for row in out[:, inputs["input_ids"].shape[1] :]]


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
    prompt = _prompt(processor, _image(32, 32, 0), "hi")
    assert prompt.startswith("<|im_start|>system\n")  # default system turn, as the real template
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("use_fast", [True, False])
def test_big_image_becomes_few_tokens(folder, use_fast):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, use_fast=use_fast)
    image = _image(3000, 4000, 1)
    inputs = processor(text=[_prompt(processor, image, "x")], images=[image], return_tensors="pt")
    n_tokens = int(inputs["image_grid_thw"].prod()) // tiny_vl.MERGE_SIZE**2
    assert 4 <= n_tokens <= tiny_vl.MAX_PIXELS // tiny_vl.PX_PER_TOKEN
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == n_tokens


def test_generate_returns_new_tokens(loaded):
    import torch

    model, processor = loaded
    image = _image(200, 300, 2)
    inputs = processor(text=[_prompt(processor, image, "Describe this image.")], images=[image],
                       return_tensors="pt", padding=True)  # fmt: skip
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    assert out.dtype == torch.long and out.shape[0] == 1
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= MAX_NEW
    assert isinstance(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0], str)


def test_batched_equals_sequential(loaded):
    model, processor = loaded
    images = [_image(3000, 4000, 3), _image(64, 64, 4), _image(200, 500, 5)]
    texts = ["Describe this image.", "What is it?", "the quick brown fox jumps over the lazy dog"]
    prompts = [_prompt(processor, im, t) for im, t in zip(images, texts)]

    sequential = [_new_tokens(model, processor(text=[p], images=[im], return_tensors="pt"))[0]
                  for p, im in zip(prompts, images)]  # fmt: skip
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="left")
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # really padded
    assert _new_tokens(model, batch) == sequential


def test_build_is_deterministic(folder, tmp_path):
    tiny_vl.build(tmp_path)

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert all(digest(tmp_path / n) == digest(folder / n) for n in names)
