"""The tiny Qwen3-VL + LoRA adapters load and generate through the production loaders only.

Weights are random: assert shapes, types, counts, batch/sequential agreement and that adapters change
logits, never text.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.tiny import diagram as tiny_diagram
from services.tiny import ensure

MAX_NEW = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return ensure("diagram", root=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(folder):
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    base = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    model = PeftModel.from_pretrained(base, folder / "adapters" / "default", adapter_name="default")
    model.load_adapter(folder / "adapters" / "alt", adapter_name="alt")
    model.set_adapter("default")
    model.eval()
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
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, use_fast=use_fast)
    image = _image(3000, 4000, 1)
    inputs = processor(text=[_prompt(processor, image, "x")], images=[image], return_tensors="pt")
    n_tokens = int(inputs["image_grid_thw"].prod()) // tiny_diagram.MERGE_SIZE**2
    assert 4 <= n_tokens <= tiny_diagram.MAX_PIXELS // tiny_diagram.PX_PER_TOKEN
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == n_tokens


def test_generate_with_adapter(loaded):
    import torch

    model, processor = loaded
    model.set_adapter("default")
    image = _image(240, 320, 2)
    inputs = processor(text=[_prompt(processor, image, "Recognise this diagram.")], images=[image],
                       return_tensors="pt", padding=True)  # fmt: skip
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    assert out.dtype == torch.long and out.shape[0] == 1
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= MAX_NEW


def test_batched_equals_sequential_with_adapter(loaded):
    model, processor = loaded
    model.set_adapter("default")
    images = [_image(3000, 4000, 3), _image(64, 64, 4), _image(200, 500, 5)]
    texts = ["Describe this diagram.", "What is it?", "| step | action | role | the quick brown fox"]
    prompts = [_prompt(processor, im, t) for im, t in zip(images, texts)]

    sequential = [_new_tokens(model, processor(text=[p], images=[im], return_tensors="pt"))[0]
                  for p, im in zip(prompts, images)]  # fmt: skip
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="left")
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # really padded
    assert _new_tokens(model, batch) == sequential


def test_adapters_and_base_give_different_logits(loaded):
    import torch

    model, processor = loaded
    image = _image(128, 128, 6)
    inputs = processor(text=[_prompt(processor, image, "hello")], images=[image], return_tensors="pt")

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
    tiny_diagram.build(tmp_path)

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                           if p.is_file() and not p.name.startswith("."))  # fmt: skip
    assert all(digest(tmp_path / n) == digest(folder / n) for n in names)
