"""The tiny Qwen3-TTS CustomVoice checkpoint loads and speaks through the production loader only.

Weights are random: assert rates, shapes, dtypes, lengths, levels and control flow, never content.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.tiny import tts as tiny_tts
from tests.tiny.helpers import assert_rebuild_identical

FAMILY = "tts"
SR = 24000
FRAME = 1920  # samples per 12.5 Hz codec frame
VOICES = ["aiden", "dylan", "eric", "ono_anna", "ryan", "serena", "sohee", "uncle_fu", "vivian"]
LANGUAGES = [
    "auto", "chinese", "english", "french", "german", "italian",
    "japanese", "korean", "portuguese", "russian", "spanish",
]  # fmt: skip


@pytest.fixture(scope="module")
def model(folder):
    import torch
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)


def _rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))


def _assert_audio(wavs, sr, count):
    assert sr == SR
    assert isinstance(wavs, list) and len(wavs) == count
    for wav in wavs:
        assert isinstance(wav, np.ndarray) and wav.dtype == np.float32 and wav.ndim == 1
        assert wav.shape[0] > 0 and wav.shape[0] % FRAME == 0
        assert np.isfinite(wav).all()
        assert _rms(wav) > 1e-2  # the package's default init decodes to ~1e-9: the tiny one must not


def test_real_layout(folder, model):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_tts"
    assert cfg["tts_model_type"] == "custom_voice" and cfg["tokenizer_type"] == "qwen3_tts_tokenizer_12hz"
    assert "speaker_encoder_config" not in cfg  # save_pretrained's `"model_type": ""` breaks reload
    talker = cfg["talker_config"]
    assert talker["spk_id"]["vivian"] == 3065 and talker["codec_eos_token_id"] == 2150
    assert talker["vocab_size"] == 3072 and talker["num_code_groups"] == 16
    assert (folder / "speech_tokenizer" / "config.json").is_file()
    assert (folder / "speech_tokenizer" / "preprocessor_config.json").is_file()
    assert json.loads((folder / "generation_config.json").read_text()) == tiny_tts.GENERATE_DEFAULTS
    assert model.generate_defaults == tiny_tts.GENERATE_DEFAULTS

    st = model.model.speech_tokenizer
    assert st.get_model_type() == "qwen3_tts_tokenizer_12hz"
    assert st.get_output_sample_rate() == SR and st.get_decode_upsample_rate() == FRAME


def test_supported_speakers_and_languages(model):
    assert model.get_supported_speakers() == VOICES
    assert model.get_supported_languages() == LANGUAGES


def test_generate_one(model):
    wavs, sr = model.generate_custom_voice(
        text="Hello there.", speaker="Vivian", language="English", instruct=None, max_new_tokens=40
    )
    _assert_audio(wavs, sr, 1)
    # The tiny talker never emits EOS; the token sampled at the last step becomes no frame.
    assert wavs[0].shape[0] == (40 - 1) * FRAME


def test_generation_defaults_are_short_and_greedy(model):
    kwargs = dict(text="Hello there.", speaker="Ryan", language="English")
    first, sr = model.generate_custom_voice(**kwargs)
    _assert_audio(first, sr, 1)
    assert first[0].shape[0] == (tiny_tts.GENERATE_DEFAULTS["max_new_tokens"] - 1) * FRAME
    again, _ = model.generate_custom_voice(**kwargs)
    assert np.array_equal(first[0], again[0])  # greedy by default: no seed needed


def test_instruct_is_accepted(model):
    wavs, sr = model.generate_custom_voice(
        text="Hello there.", speaker="Serena", language="Chinese", instruct="Speak softly.", max_new_tokens=4
    )
    _assert_audio(wavs, sr, 1)


def test_unknown_speaker_raises(model):
    with pytest.raises(ValueError):
        model.generate_custom_voice(text="Hello.", speaker="Nobody", language="English", max_new_tokens=4)


def test_batch_of_two(model):
    wavs, sr = model.generate_custom_voice(
        text=["Hello there.", "A second, longer sentence to pad against."],
        speaker="Vivian",
        language="English",
        max_new_tokens=6,
    )
    _assert_audio(wavs, sr, 2)


def test_all_nine_speakers(model):
    # "Auto" takes the dialect path for eric (sichuan) and dylan (beijing).
    wavs, sr = model.generate_custom_voice(
        text=["Hi."] * len(VOICES), speaker=[v.title() for v in VOICES], language="Auto", max_new_tokens=3
    )
    _assert_audio(wavs, sr, len(VOICES))


def test_build_is_deterministic(folder, tmp_path):
    assert_rebuild_identical(tiny_tts.build, folder, tmp_path)
