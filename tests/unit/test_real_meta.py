"""The real configs instantiated on PyTorch's meta device (no memory, no weights) through the classes the
production loaders use: the pinned packages accept the files, the sizes are the published ones, and the
module paths the engines and the LoRA adapters address exist at real size.

Published sizes (model cards): Qwen3-0.6B is 0.6B parameters of which 0.44B non-embedding, Qwen3-1.7B
1.7B of which 1.4B non-embedding (the text decoders of the aligner, the ASR, the TTS talker and
Qwen3-VL-2B); Qwen2.5-VL-3B-Instruct is 3.75B in all.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests import real_configs as real
from tests.real_configs import on_meta

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def billions(model, prefix: str = "") -> float:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix)) / 1e9


def linear_names(model, suffixes) -> list[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in suffixes]


def test_aligner_real_config_on_meta_and_the_engine_limit():
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration

    from services.aligner.engine import QwenForcedAlignerEngine
    from services.runtime.core.settings import AlignerSettings

    cfg = real.asr_config(real.ALIGNER)
    model = on_meta(Qwen3ASRForConditionalGeneration, cfg)
    thinker = model.thinker
    # The classifier head: one logit per 80 ms class, classify_num wide (not the vocabulary).
    assert thinker.lm_head.out_features == cfg.thinker_config.classify_num == 5000
    assert thinker.lm_head.weight is not thinker.model.embed_tokens.weight
    assert round(billions(thinker, "model.layers"), 2) == 0.44  # Qwen3-0.6B's non-embedding size
    assert 0.55 < billions(thinker, "model.") < 0.65  # + its 152064 x 1024 embeddings
    assert 0.29 < billions(thinker, "audio_tower.") < 0.33  # the 24-layer audio encoder (d_model 1024)
    # The engine's longest pass, computed by the engine from the real config: (5000 - 1) x 80 ms.
    engine = QwenForcedAlignerEngine(SimpleNamespace(model=SimpleNamespace(config=cfg)))
    assert engine.max_seconds == pytest.approx((5000 - 1) * 0.080)
    assert AlignerSettings().window_seconds <= engine.max_seconds


def test_asr_real_config_on_meta():
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration

    cfg = real.asr_config(real.ASR)
    model = on_meta(Qwen3ASRForConditionalGeneration, cfg)
    thinker = model.thinker
    assert "forced_aligner" not in cfg.thinker_config.model_type
    # A vocabulary-wide head, tied to the embeddings (text_config.tie_word_embeddings).
    assert thinker.lm_head.out_features == cfg.thinker_config.text_config.vocab_size == 151936
    assert thinker.lm_head.weight is thinker.model.embed_tokens.weight
    assert round(billions(thinker, "model.layers"), 1) == 1.4  # Qwen3-1.7B's non-embedding size
    assert 1.65 < billions(thinker, "model.") < 1.75
    assert 1.95 < billions(model) < 2.1  # with the 0.3B audio encoder
    # The audio encoder's windows: 100-frame conv chunks, attention in 800-frame (8 s) windows.
    audio = cfg.thinker_config.audio_config
    assert (audio.n_window, audio.n_window_infer, audio.num_mel_bins) == (50, 800, 128)


def test_tts_real_configs_on_meta():
    from qwen_tts.core import Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import Qwen3TTSForConditionalGeneration

    cfg = real.tts_config(real.TTS)
    model = on_meta(Qwen3TTSForConditionalGeneration, cfg)
    talker = model.talker
    assert round(billions(talker, "model.layers"), 1) == 1.4  # Qwen3-1.7B-sized talker
    assert 1.85 < billions(model) < 2.0  # + the 151936 x 2048 text embedding, code predictor, heads
    assert talker.codec_head.out_features == cfg.talker_config.vocab_size == 3072
    # One head per residual code group after the first, each over a 2048-entry codebook.
    heads = talker.code_predictor.lm_head
    assert len(heads) == cfg.talker_config.num_code_groups - 1 == 15
    assert {h.out_features for h in heads} == {2048}

    codec_cfg = real.codec_config(real.TTS / "speech_tokenizer")
    codec = on_meta(Qwen3TTSTokenizerV2Model, codec_cfg)
    assert 0.14 < billions(codec) < 0.17
    dec = codec.decoder.config
    assert (dec.num_hidden_layers, dec.sliding_window, codec_cfg.decode_upsample_rate) == (8, 72, 1920)


def test_qwen2_5_vl_real_config_on_meta_and_lora_module_names():
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = real.vl_config(real.VL)
    model = on_meta(Qwen2_5_VLForConditionalGeneration, cfg)
    assert round(billions(model), 2) == 3.75  # tied lm_head counted once
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    layers = cfg.text_config.num_hidden_layers
    assert layers == 36 and cfg.text_config.hidden_size == 2048  # the flat file was read into text_config
    names = linear_names(model, LORA_TARGETS)
    text = [n for n in names if n.startswith("model.language_model.layers.")]
    assert len(text) == layers * len(LORA_TARGETS)
    # Unlike Qwen3-VL, the Qwen2.5-VL vision blocks have gate/up/down_proj MLPs too: plain target names
    # would also wrap the 32 vision blocks. A LoRA for this model must name the language model's modules.
    vision = [n for n in names if n.startswith("model.visual.blocks.")]
    assert len(vision) == cfg.vision_config.depth * 3 and len(names) == len(text) + len(vision)


def test_qwen3_vl_2b_config_on_meta_and_lora_targets():
    """Qwen3-VL-2B has no vendored config: built from the model card values and transformers' defaults
    (tests/real_configs.py). The tiny adapters' plain target names hit the decoder only, at real size."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import Qwen3VLForConditionalGeneration

    from services.tiny.diagram import LORA_TARGETS as TINY_TARGETS

    cfg = real.qwen3_vl_2b_config()
    model = on_meta(Qwen3VLForConditionalGeneration, cfg)
    assert round(billions(model, "model.language_model.layers"), 1) == 1.4  # Qwen3-1.7B-sized decoder
    assert 2.0 < billions(model) < 2.3  # + tied 151936 x 2048 embeddings and the 0.4B vision tower
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert sorted(TINY_TARGETS) == sorted(LORA_TARGETS)
    names = linear_names(model, TINY_TARGETS)
    assert len(names) == 28 * len(TINY_TARGETS)
    assert all(n.startswith("model.language_model.layers.") for n in names)  # vision: qkv/proj/linear_fc*
    # peft's adapter file keys at real size: base_model.model.<module path>.lora_A/B.weight.
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(TINY_TARGETS),
                                                  task_type="CAUSAL_LM", init_lora_weights=False))
    keys = get_peft_model_state_dict(peft_model)
    assert len(keys) == 2 * len(names)
    assert {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in keys} == set(names)
