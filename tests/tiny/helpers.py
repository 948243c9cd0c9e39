"""Inputs and checks the tiny-checkpoint tests share (plain functions; fixtures are in conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def load_model_and_processor(folder: Path, model_class):
    """`model_class` (float32, eval mode) and AutoProcessor, both from the folder: the production loaders."""
    import torch
    from transformers import AutoProcessor

    model = model_class.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


def noise(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)


def image(h: int, w: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def image_prompt(processor, img, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def new_tokens(model, inputs, max_new: int) -> list[list[int]]:
    out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    return [row.tolist() for row in out[:, inputs["input_ids"].shape[1] :]]


def generate_for_image(model, processor, img, text: str, max_new: int):
    """Greedy generate on one image prompt: 1..max_new new token ids (long, batch of one), returned."""
    import torch

    inputs = processor(text=[image_prompt(processor, img, text)], images=[img], return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    assert out.dtype == torch.long and out.shape[0] == 1
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= max_new
    return out[:, inputs["input_ids"].shape[1] :]


def assert_big_image_becomes_few_tokens(folder: Path, use_fast: bool, family) -> None:
    """A 4000x3000 photo costs 4..MAX_PIXELS/PX_PER_TOKEN image tokens (`family`: the builder module)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, use_fast=use_fast)
    img = image(3000, 4000, 1)
    inputs = processor(text=[image_prompt(processor, img, "x")], images=[img], return_tensors="pt")
    n_tokens = int(inputs["image_grid_thw"].prod()) // family.MERGE_SIZE**2
    assert 4 <= n_tokens <= family.MAX_PIXELS // family.PX_PER_TOKEN
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == n_tokens


def assert_batched_equals_sequential(model, processor, texts: list[str], max_new: int) -> None:
    """Greedy tokens of a left-padded batch equal those of one request at a time (float32: in fp16/bf16
    padding changes the last bits of the logits, so only near-equality would hold there)."""
    images = [image(3000, 4000, 3), image(64, 64, 4), image(200, 500, 5)]
    prompts = [image_prompt(processor, im, t) for im, t in zip(images, texts)]

    sequential = [new_tokens(model, processor(text=[p], images=[im], return_tensors="pt"), max_new)[0]
                  for p, im in zip(prompts, images)]  # fmt: skip
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="left")
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # really padded
    assert new_tokens(model, batch, max_new) == sequential


def assert_rebuild_identical(build, folder: Path, tmp_path: Path) -> None:
    """build(tmp_path) writes the same files, byte for byte, as the cached `folder` (its dot-files aside)."""
    build(tmp_path)

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    names = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    cached = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert names == cached
    for rel in names:
        assert digest(tmp_path / rel) == digest(folder / rel), rel
