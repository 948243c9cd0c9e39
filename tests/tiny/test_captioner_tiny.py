"""The tiny Qwen3-Omni captioner (thinker only) loads and generates through the production loaders.

Weights are random: assert shapes, types and counts, never text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.tiny import captioner as tiny_captioner
from tests.tiny.helpers import assert_rebuild_identical, load_model_and_processor

FAMILY = "captioner"
SR = 16000
MAX_NEW = 8


@pytest.fixture(scope="module")
def loaded(folder):
    from transformers import Qwen3OmniMoeForConditionalGeneration

    return load_model_and_processor(folder, Qwen3OmniMoeForConditionalGeneration)


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _inputs(processor, audio):
    messages = [{"role": "user", "content": [{"type": "audio", "audio": audio}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], audio=[audio], return_tensors="pt", padding=True)


def test_real_layout(folder, loaded):
    model, processor = loaded
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.json"} <= names  # fmt: skip
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 15 * 2**20

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_omni_moe" and cfg["enable_audio_output"] is False
    assert not hasattr(model, "talker") and not hasattr(model, "code2wav")
    thinker = cfg["thinker_config"]
    assert thinker["audio_config"]["n_window"] == 50
    assert thinker["text_config"]["num_experts"] <= 8
    assert len(thinker["vision_config"]["deepstack_visual_indexes"]) <= thinker["text_config"]["num_hidden_layers"]

    tok = processor.tokenizer
    assert thinker["audio_token_id"] == tok.convert_tokens_to_ids("<|audio_pad|>")
    assert thinker["audio_start_token_id"] == tok.convert_tokens_to_ids("<|audio_start|>")
    for role in ("system", "user", "assistant"):
        ids = tok.encode(role, add_special_tokens=False)
        assert len(ids) == 1 and cfg[f"{role}_token_id"] == ids[0]
    for attr, token in tiny_captioner.MEDIA_TOKEN_NAMES.items():
        assert getattr(tok, attr) == token

    # Image processor and feature extractor share one file, as in the real repo.
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert pre["image_processor_type"].startswith("Qwen2VLImageProcessor")
    assert pre["feature_size"] == thinker["audio_config"]["num_mel_bins"]
    assert type(processor).__name__ == "Qwen3OmniMoeProcessor"
    assert processor.feature_extractor.sampling_rate == SR

    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.6, 0.95, 20)


def test_audio_part_expands_to_13_tokens_per_second(loaded):
    _, processor = loaded
    inputs = _inputs(processor, _audio(3.0))
    assert inputs["input_features"].shape == (1, tiny_captioner.MEL_BINS, 300)  # 10 ms hop
    assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|audio_pad|>")).sum()) == 39
    prompt = processor.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.startswith("<|im_start|>user\n<|audio_start|><|audio_pad|>")
    assert prompt.endswith("<|audio_end|><|im_end|>\n<|im_start|>assistant\n")


def test_generate_returns_token_ids(loaded):
    import torch

    model, processor = loaded
    inputs = _inputs(processor, _audio(2.5, 1))
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Qwen3-Omni's generate() routes `thinker_*` kwargs to the thinker; a bare max_new_tokens is
    # overridden by its thinker_max_new_tokens default (1024), so both are passed.
    ids, audio = model.generate(**inputs, max_new_tokens=MAX_NEW, thinker_max_new_tokens=MAX_NEW,
                                return_audio=False, thinker_eos_token_id=eos)  # fmt: skip
    assert audio is None
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.long and ids.shape[0] == 1
    new = ids[:, inputs["input_ids"].shape[1] :]
    assert 1 <= new.shape[1] <= MAX_NEW
    assert isinstance(processor.batch_decode(new, skip_special_tokens=True)[0], str)


def test_build_is_deterministic(folder, tmp_path):
    assert_rebuild_identical(tiny_captioner.build, folder, tmp_path)
